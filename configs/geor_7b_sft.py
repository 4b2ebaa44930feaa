"""Geo-R stage 1 at real size: Chain-of-Region SFT of Qwen2.5-VL-7B-Instruct.

The paper: 500K random MP16 samples, AdamW, lr 1e-5, batch 64, one epoch.
Hardware: ``:tpu_v5p`` (a v5p-16 slice: 8 chips) or ``:gpu8`` (8x 80 GB GPUs);
both shard the model FSDP over 8 devices with bf16 compute, fp32 master
weights and rematerialised, scanned layers.

  launch/tpu_pod.sh ... launch/train.py --config=configs/geor_7b_sft.py:tpu_v5p --workdir=gs://.../sft
  launch/gpu.sh launch/train.py --config=configs/geor_7b_sft.py:gpu8 --workdir=/ckpt/geor_7b_sft

Paths are placeholders for the user's local copies: the HF checkpoint
directory (weights + tokenizer) and records built with tools/build_dataset.py.
"""

from geor_jax import run_config

CHECKPOINT = "/models/Qwen2.5-VL-7B-Instruct"
RECORDS = "/data/records/geo_cor_records"


def get_config(hardware: str = "tpu_v5p"):
    if hardware not in ("tpu_v5p", "gpu8"):
        raise ValueError(f"hardware={hardware!r}: choose 'tpu_v5p' or 'gpu8'")
    c = run_config.base_config("sft")
    c.mesh = dict(data=1, fsdp=8, tensor=1)
    c.model.init_from = CHECKPOINT
    c.model.text = dict(run_config.QWEN2_5_VL_7B_TEXT)
    c.data.tokenizer_dir = CHECKPOINT
    c.data.records_dir = f"{RECORDS}/mp16_pro_max512/1.0.0"
    c.eval.records_dir = f"{RECORDS}/im2gps3k/1.0.0"
    c.data.global_batch_size = 64
    # 8x 80 GB GPUs hold less than a v5p chip's 95 GB: accumulate over two halves.
    c.sft.num_micro_batches = 1 if hardware == "tpu_v5p" else 2
    return c
