"""Geo-R stage 2 at real size with LoRA: GRPO of the 7B CoR-SFT model, adapters r=64 on the text decoder.

Only the adapters train (about 161 M parameters, fp32 with their AdamW moments); the base weights stay frozen in
bf16, and the KL reference is the base with the adapters disabled, so no second copy of the 7B weights is held.
G = 8 completions of 256 tokens per prompt, 8 prompts per step. Two targets, each following its row of the memory
plan (tools/bench/RESULTS.md, "LoRA"):

- ``:tpu_v5e``: a TPU v5e-8 (8 chips x 16 GB), FSDP over the 8 chips, 4 micro-batches: peak 12.3 GB/chip by the plan;
- ``:gpu1``: one 80 GB GPU, 8 micro-batches (one prompt group each): peak 56.7 GB by the plan.

  launch/gpu.sh launch/train.py --config=configs/geor_7b_grpo_lora.py:gpu1 --workdir=/ckpt/geor_7b_grpo_lora

The run exports the merged policy to ``hf/`` and the adapter alone, in PEFT's format, to ``adapter/``.
"""

from geor_jax.run import config as run_config

RECORDS = "/data/records/geo_cor_records"
CHECKPOINT = "/ckpt/geor_7b_sft/hf"  # the SFT export
# hardware -> (fsdp devices, micro-batches)
HARDWARE = {"tpu_v5e": (8, 4), "gpu1": (1, 8)}


def get_config(hardware: str = "tpu_v5e"):
    if hardware not in HARDWARE:
        raise ValueError(f"hardware={hardware!r}: choose one of {tuple(HARDWARE)}")
    fsdp, micro_batches = HARDWARE[hardware]
    c = run_config.base_config("grpo")
    c.mesh.update(data=1, fsdp=fsdp, tensor=1)
    c.model.init_from = CHECKPOINT
    c.model.text.update(run_config.QWEN2_5_VL_7B_TEXT)
    c.model.param_dtype = "bfloat16"  # frozen base: no fp32 master copy needed (the adapters are fp32)
    c.data.tokenizer_dir = CHECKPOINT
    c.data.records_dir = f"{RECORDS}/mp16_hard/1.1.0"
    c.eval.records_dir = f"{RECORDS}/im2gps3k/1.1.0"
    c.data.global_batch_size = 8
    c.grpo.group_size = 8
    c.grpo.max_new_tokens = 256
    c.grpo.num_micro_batches = micro_batches
    c.lora.update(rank=64, alpha=128.0)
    c.optimizer.learning_rate = 1e-5  # LoRA's usual 10x the full fine-tuning rate (1e-6)
    c.export.dtype = "bfloat16"  # the merged export, as the other real-size configs serve it
    c.eval.num_examples = 0  # the whole eval split
    return c
