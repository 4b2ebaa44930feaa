"""GRPO of Qwen2.5-VL-3B (the authors' released script's base model) with the Haversine reward.

Same recipe as configs/geor_7b_grpo.py (G 4, beta 0.04, lr 1e-6, temperature
0.9, clip 0.2, 256 new tokens); the 3B fits with twice the prompts per step.
``:tpu_v5p`` or ``:gpu8``.
"""

from geor_jax import run_config

SFT_EXPORT = "/ckpt/geor_3b_sft/hf"
RECORDS = "/data/records/geo_cor_records"


def get_config(hardware: str = "tpu_v5p"):
    if hardware not in ("tpu_v5p", "gpu8"):
        raise ValueError(f"hardware={hardware!r}: choose 'tpu_v5p' or 'gpu8'")
    c = run_config.base_config("grpo")
    c.mesh = dict(data=1, fsdp=8, tensor=1)
    c.model.init_from = SFT_EXPORT
    c.model.text = dict(run_config.QWEN2_5_VL_3B_TEXT)
    c.data.tokenizer_dir = SFT_EXPORT
    c.data.records_dir = f"{RECORDS}/mp16_hard/1.0.0"
    c.eval.records_dir = f"{RECORDS}/im2gps3k/1.0.0"
    c.data.global_batch_size = 32
    return c
