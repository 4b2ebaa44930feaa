"""GRPO of Qwen2.5-VL-3B (the base model of the authors' released script) with the Haversine reward.

The recipe of configs/geor_7b_grpo.py; the 3B fits twice the prompts per
step (32 x G 4, in 4 micro-batches). ``:tpu_v5p`` or ``:gpu8``.
"""

from geor_jax.run import config as run_config

RECORDS = "/data/records/geo_cor_records"


def get_config(hardware: str = "tpu_v5p"):
    c = run_config.real_size_config(
        "grpo", hardware, run_config.QWEN2_5_VL_3B_TEXT, checkpoint="/ckpt/geor_3b_sft/hf",
        train_records=f"{RECORDS}/mp16_hard/1.1.0", eval_records=f"{RECORDS}/im2gps3k/1.1.0",
        num_micro_batches=4,  # 8 prompts per micro-batch: plan_memory <= 38 GB/device
    )
    c.data.global_batch_size = 32
    return c
