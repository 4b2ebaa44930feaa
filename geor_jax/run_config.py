"""The layout and defaults of a training config, shared by every file in ``configs/``.

``base_config(stage)`` returns the full ml_collections layout with the Geo-R
paper's hyperparameters as defaults (SFT: AdamW lr 1e-5, batch 64; GRPO: G 4,
beta 0.04, lr 1e-6, temperature 0.9, clip 0.2, 256 new tokens); config files
override what their experiment changes. ``check(config, num_devices)``
validates shapes without building anything.

  stage          "sft" (Chain-of-Region targets) or "grpo" (Haversine reward)
  seed           model init and sampling keys
  mesh           data / fsdp / tensor sizes (-1: all remaining devices)
  model          init_from (HF checkpoint dir, "" = random from the dims),
                 dtype / param_dtype, remat, scan_layers, text and vision dims
  data           records, tokenizer (the checkpoint dir: its chat template
                 and preprocessor_config.json), batch (prompts per step for
                 GRPO), image sizing (resize "native": as the processor does,
                 at most num_shapes batch shapes; "bucket": resized to
                 buckets), processor overrides (max_pixels, min_pixels: 0 =
                 the checkpoint's; any other PatchConfig field may be added),
                 prompt (bucket) / target lengths, instruction ("" = default)
  eval           held-out records, batch, examples, cadence, answer length
  optimizer      AdamW + warmup + cosine, clipping
  sft            micro-batches, LM head chunk (target positions; 0 = none)
  grpo           group size, beta, clip, aggregation, sampling, passes,
                 LM head chunk (completion positions; 0 = none)
  reward         distance reward and its breakpoints, combination, bonuses
  train          steps, logging, checkpoint cadence, HF export
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from geor_jax.data import patches

# Qwen2.5-VL-7B-Instruct's dimensions (the 3B differs in the text tower).
QWEN2_5_VL_7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                          rope_theta=1e6, mrope_section=(16, 24, 24), tie_word_embeddings=False)
QWEN2_5_VL_3B_TEXT = dict(hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16, num_kv_heads=2,
                          rope_theta=1e6, mrope_section=(16, 24, 24), tie_word_embeddings=True)
QWEN2_5_VL_VISION = dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, window_size=112,
                         fullatt_block_indexes=(7, 15, 23, 31))


def base_config(stage: str = "sft") -> ml_collections.ConfigDict:
    """Every field a run reads, with the paper's hyperparameters for ``stage``."""
    if stage not in ("sft", "grpo"):
        raise ValueError(f"stage={stage!r}: choose 'sft' or 'grpo'")
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.seed = 0
    c.mesh = dict(data=1, fsdp=-1, tensor=1)

    c.model = ml_collections.ConfigDict()
    c.model.init_from = ""
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = True
    c.model.scan_layers = True
    c.model.text = dict(QWEN2_5_VL_7B_TEXT)
    c.model.vision = dict(QWEN2_5_VL_VISION)

    c.data = ml_collections.ConfigDict()
    c.data.data_dir = ""
    c.data.records_dir = ""
    c.data.tokenizer_dir = ""
    c.data.split = "train"
    c.data.global_batch_size = 64 if stage == "sft" else 16
    c.data.resize = "native"
    c.data.processor = ml_collections.ConfigDict(dict(min_pixels=0, max_pixels=0))
    c.data.num_shapes = 8
    c.data.sort_window = 8
    c.data.shape_sample = 1024
    c.data.buckets = ((448, 448),)
    c.data.max_prompt_len = 384
    c.data.max_target_len = 64
    c.data.seed = 0
    c.data.worker_count = 4
    c.data.instruction = ""

    c.eval = ml_collections.ConfigDict()
    c.eval.records_dir = ""
    c.eval.split = "test"
    c.eval.batch_size = 64
    c.eval.num_examples = 3000
    c.eval.every_steps = 1000
    c.eval.max_new_tokens = 128

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 1e-5 if stage == "sft" else 1e-6
    c.optimizer.warmup_steps = 100 if stage == "sft" else 0
    c.optimizer.final_learning_rate_fraction = 0.0 if stage == "sft" else 1.0
    c.optimizer.weight_decay = 0.0
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.max_grad_norm = 1.0

    c.sft = ml_collections.ConfigDict()
    c.sft.num_micro_batches = 1
    c.sft.logits_chunk_size = 128  # positions whose (rows, chunk, vocab) logits exist at once; 0: all

    c.grpo = ml_collections.ConfigDict()
    c.grpo.group_size = 4
    c.grpo.beta = 0.04
    c.grpo.clip_eps = 0.2
    c.grpo.clip_eps_high = 0.0  # 0: same as clip_eps
    c.grpo.aggregation = "token-mean"
    c.grpo.advantage_scale = "group"
    c.grpo.temperature = 0.9
    c.grpo.top_k = 0
    c.grpo.top_p = 1.0
    c.grpo.max_new_tokens = 256
    c.grpo.num_passes = 1
    c.grpo.num_micro_batches = 1
    c.grpo.shared_prompt = True
    c.grpo.logits_chunk_size = 128

    c.reward = ml_collections.ConfigDict()
    c.reward.distance = "geor"
    c.reward.breakpoints_km = (750.0, 2500.0, 20000.0)
    c.reward.distance_kwargs = {}
    c.reward.combine = "product"
    c.reward.level_weights = (0.0, 0.0, 0.0)

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 7813 if stage == "sft" else 2000  # SFT: 500K samples / 64, one epoch
    c.train.log_every = 10
    c.train.checkpoint_every = 500 if stage == "sft" else 100
    c.train.keep_checkpoints = 3
    c.train.export_hf = True
    return c


HARDWARE = ("tpu_v5p", "gpu8")


def real_size_config(stage: str, hardware: str, text: dict, checkpoint: str, train_records: str,
                     eval_records: str, num_micro_batches: int) -> ml_collections.ConfigDict:
    """A full-size run on 8 devices: a v5p-16 slice (``tpu_v5p``) or 8x 80 GB GPUs (``gpu8``).

    FSDP over the 8 devices, bf16 compute with fp32 master weights, remat and
    scanned layers (the base defaults); the model and its tokenizer come from
    ``checkpoint`` (a HF directory). ``num_micro_batches`` comes from
    tools/plan_memory.py: both targets hold 80 GB or more per device, and the
    plan's per-device peaks fit both with the same split.
    """
    if hardware not in HARDWARE:
        raise ValueError(f"hardware={hardware!r}: choose one of {HARDWARE}")
    c = base_config(stage)
    c.mesh = dict(data=1, fsdp=8, tensor=1)
    c.model.init_from = checkpoint
    c.model.text = dict(text)
    c.data.tokenizer_dir = checkpoint
    c.data.records_dir = train_records
    c.eval.records_dir = eval_records
    c.sft.num_micro_batches = c.grpo.num_micro_batches = num_micro_batches
    return c


def check(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
    """Raise ``ValueError`` naming the field if shapes cannot work; returns the mesh sizes.

    Checks the model dims (through the model config's own validation), that
    the mesh uses exactly ``num_devices``, that batches split over data x
    fsdp (and into micro-batches), the image sizing mode and processor
    overrides, that buckets are whole merged patches and that the LM head
    chunk is a size (>= 0).
    """
    from geor_jax.models import qwen2_5_vl as qvl

    text, vision = config.model.text, config.model.vision
    qvl.Qwen2VLConfig(
        text=qvl.TextConfig(vocab_size=152064, **{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                                   for k, v in text.items()}),
        vision=qvl.VisionConfig(out_hidden_size=text.hidden_size,
                                **{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in vision.items()}),
    )
    sizes = dict(config.mesh)
    known = math.prod(v for v in sizes.values() if v != -1)
    if num_devices % known:
        raise ValueError(f"mesh {sizes} does not divide {num_devices} devices")
    sizes = {k: num_devices // known if v == -1 else v for k, v in sizes.items()}
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"mesh {sizes} does not use exactly {num_devices} devices")
    batch_shards = sizes["data"] * sizes["fsdp"]
    rows = config.data.global_batch_size
    if rows % batch_shards:
        raise ValueError(f"data.global_batch_size {rows} does not split over data x fsdp = {batch_shards}")
    stage_config = config.sft if config.stage == "sft" else config.grpo
    micro = stage_config.num_micro_batches
    if rows % micro:
        raise ValueError(f"data.global_batch_size {rows} does not split into {micro} micro-batches")
    data = config.data
    if data.resize not in ("native", "bucket"):
        raise ValueError(f"data.resize={data.resize!r}: choose 'native' or 'bucket'")
    fields = {f.name for f in dataclasses.fields(patches.PatchConfig)}
    if set(data.processor) - fields:
        raise ValueError(f"data.processor {sorted(set(data.processor) - fields)}: not processor settings {sorted(fields)}")
    if data.resize == "native" and min(data.num_shapes, data.sort_window, data.shape_sample) < 1:
        raise ValueError("data.num_shapes, data.sort_window and data.shape_sample must be >= 1")
    factor = 14 * 2  # patch x merge
    for bucket in data.buckets if data.resize == "bucket" else ():
        if any(side % factor for side in bucket):
            raise ValueError(f"data.buckets {tuple(bucket)}: sides must be multiples of {factor}")
    if stage_config.logits_chunk_size < 0:
        raise ValueError(f"{config.stage}.logits_chunk_size {stage_config.logits_chunk_size}: "
                         "must be >= 0 (0: no chunking)")
    return sizes
