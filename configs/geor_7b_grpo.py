"""Geo-R stage 2 at real size: GRPO of the 7B CoR-SFT model with the Haversine reward.

The authors' script: group size 4, beta 0.04, lr 1e-6, temperature 0.9, clip
0.2, 256 completion tokens, on MP16-Hard (tools/mine_hard.py). Hardware:
``:tpu_v5p`` (v5p-16 slice, 8 chips) or ``:gpu8`` (8x 80 GB GPUs).

  launch/train.py --config=configs/geor_7b_grpo.py:gpu8 --workdir=/ckpt/geor_7b_grpo \\
      --config.model.init_from=/ckpt/geor_7b_sft/hf
"""

from geor_jax import run_config

SFT_EXPORT = "/ckpt/geor_7b_sft/hf"  # launch/train.py writes <workdir>/hf at the end of SFT
RECORDS = "/data/records/geo_cor_records"


def get_config(hardware: str = "tpu_v5p"):
    if hardware not in ("tpu_v5p", "gpu8"):
        raise ValueError(f"hardware={hardware!r}: choose 'tpu_v5p' or 'gpu8'")
    c = run_config.base_config("grpo")
    c.mesh = dict(data=1, fsdp=8, tensor=1)
    c.model.init_from = SFT_EXPORT
    c.model.text = dict(run_config.QWEN2_5_VL_7B_TEXT)
    c.data.tokenizer_dir = SFT_EXPORT
    c.data.records_dir = f"{RECORDS}/mp16_hard/1.0.0"
    c.eval.records_dir = f"{RECORDS}/im2gps3k/1.0.0"
    c.data.global_batch_size = 16  # prompts per step: 16 x G 4 = 64 completions
    c.grpo.num_micro_batches = 1 if hardware == "tpu_v5p" else 2
    return c
