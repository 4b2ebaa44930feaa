"""Geo-R stage 1 at real size: Chain-of-Region SFT of Qwen2.5-VL-7B-Instruct.

The paper: 500K random MP16 samples, AdamW, lr 1e-5, batch 64, one epoch
(the defaults of geor_jax/run/config.py). ``:tpu_v5p`` (v5p-16 slice) or
``:gpu8`` (8x 80 GB GPUs).

  launch/tpu_pod.sh TPU ZONE launch/train.py --config=configs/geor_7b_sft.py:tpu_v5p --workdir=/ckpt/geor_7b_sft

Paths are placeholders for the user's local copies: the HF checkpoint
directory (weights + tokenizer) and records built with tools/build_dataset.py.
"""

from geor_jax.run import config as run_config

RECORDS = "/data/records/geo_cor_records"


def get_config(hardware: str = "tpu_v5p"):
    return run_config.real_size_config(
        "sft", hardware, run_config.QWEN2_5_VL_7B_TEXT, checkpoint="/models/Qwen2.5-VL-7B-Instruct",
        train_records=f"{RECORDS}/mp16_pro_max512/1.1.0", eval_records=f"{RECORDS}/im2gps3k/1.1.0",
        num_micro_batches=8,  # plan_memory: 27.5 GB/device (1 micro-batch: 167 GB, no fit)
    )
