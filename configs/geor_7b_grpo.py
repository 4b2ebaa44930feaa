"""Geo-R stage 2 at real size: GRPO of the 7B CoR-SFT model with the Haversine reward.

The authors' script: group size 4, beta 0.04, lr 1e-6, temperature 0.9, clip
0.2, 256 completion tokens (the defaults of geor_jax/run/config.py), on
MP16-Hard (tools/mine_hard.py). 16 prompts x G 4 = 64 completions per step.
``:tpu_v5p`` (v5p-16 slice) or ``:gpu8`` (8x 80 GB GPUs).

  launch/gpu.sh launch/train.py --config=configs/geor_7b_grpo.py:gpu8 --workdir=/ckpt/geor_7b_grpo
"""

from geor_jax.run import config as run_config

RECORDS = "/data/records/geo_cor_records"


def get_config(hardware: str = "tpu_v5p"):
    return run_config.real_size_config(
        "grpo", hardware, run_config.QWEN2_5_VL_7B_TEXT, checkpoint="/ckpt/geor_7b_sft/hf",  # the SFT export
        train_records=f"{RECORDS}/mp16_hard/1.1.0", eval_records=f"{RECORDS}/im2gps3k/1.1.0",
        num_micro_batches=2,  # 8 prompts x G 4 per micro-batch: plan_memory 42 GB/device
    )
