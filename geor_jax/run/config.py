"""A run config: one section per component, the Geo-R paper's defaults, checks that span sections.

Each section of a config file is one component's dataclass, which holds that
section's fields, defaults and checks (``geor_jax.config_fields``)::

  stage, seed    "sft" (Chain-of-Region targets) or "grpo" (Haversine reward); init and sampling seed
  mesh           sharding.MeshConfig          data / fsdp / tensor sizes (-1: all remaining devices)
  model          run.build.ModelConfig        init_from (HF dir, "" = random), dtypes, remat, scan, dims
  data           data.pipeline.PipelineConfig records, tokenizer (the checkpoint dir: chat template and
                                              preprocessor_config.json), batch, image sizing (resize "native"
                                              in at most num_shapes shapes, or "bucket"), processor overrides
                                              (max_pixels, ...), lengths, prompt
  eval           evaluate.EvalConfig          held-out records, batch, examples, cadence, answer length
  optimizer      train_state.OptimizerConfig  AdamW + warmup + cosine, clipping
  sft            sft.SFTConfig                micro-batches, LM head chunk
  grpo           grpo.GRPOConfig              group, beta, clip, aggregation, sampling, passes
  reward         rewards.RewardConfig         distance reward and its breakpoints, combination, bonuses
  lora           lora.LoRAConfig              rank (0: off), alpha, dropout, target modules, PEFT adapter to continue
  train          run.loop.TrainConfig         steps, logging, checkpoint cadence, frozen towers, HF export,
                                              profiling, JAX cache
  export         run.export.ExportConfig      the exported HF checkpoint's dtype

``base_config(stage)`` is the ml_collections form that config files edit,
with the paper's hyperparameters for the stage (SFT: AdamW lr 1e-5, batch
64; GRPO: G 4, beta 0.04, lr 1e-6, temperature 0.9, clip 0.2, 256 new
tokens). ``resolve(config, num_devices)`` turns it into a validated
``RunConfig`` before anything is built or written: a bad value raises
``ConfigError`` naming the field as typed on the command line. Adding a
field means adding it to its component's dataclass, nothing else.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from geor_jax import config_fields, evaluate, grpo, lora, rewards, sft, sharding, train_state
from geor_jax.config_fields import ConfigError
from geor_jax.data import pipeline
from geor_jax.models import qwen2_5_vl as qvl
from geor_jax.run import build
from geor_jax.run.export import ExportConfig
from geor_jax.run.loop import TrainConfig

STAGES = ("sft", "grpo")

# The text towers of Qwen2.5-VL-7B (``qvl.TextConfig``'s defaults) and -3B; both share VisionConfig's defaults.
QWEN2_5_VL_7B_TEXT = {k: v for k, v in dataclasses.asdict(qvl.TextConfig()).items() if k != "vocab_size"}
QWEN2_5_VL_3B_TEXT = dict(hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16, num_kv_heads=2,
                          rope_theta=1e6, mrope_section=(16, 24, 24), tie_word_embeddings=True)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run, validated: one component dataclass per section (see the module docstring)."""

    stage: str = config_fields.field("sft", config_fields.one_of(*STAGES))
    seed: int = 0
    mesh: sharding.MeshConfig = config_fields.field(sharding.MeshConfig())
    model: build.ModelConfig = config_fields.field(build.ModelConfig())
    data: pipeline.PipelineConfig = config_fields.field(pipeline.PipelineConfig(),
                                                        exclude=("shuffle", "num_epochs", "drop_remainder", "patch"))
    eval: evaluate.EvalConfig = config_fields.field(evaluate.EvalConfig())
    optimizer: train_state.OptimizerConfig = config_fields.field(train_state.OptimizerConfig(),
                                                                 exclude=("total_steps",))
    sft: sft.SFTConfig = config_fields.field(sft.SFTConfig())
    grpo: grpo.GRPOConfig = config_fields.field(grpo.GRPOConfig())
    reward: rewards.RewardConfig = config_fields.field(rewards.RewardConfig())
    lora: lora.LoRAConfig = config_fields.field(lora.LoRAConfig())
    train: TrainConfig = config_fields.field(TrainConfig())
    export: ExportConfig = config_fields.field(ExportConfig())

    def __post_init__(self):
        config_fields.check(self)


# The paper's recipe where it differs from the components' own defaults (which are GRPO's).
_RECIPE = {
    "model": {"dtype": "bfloat16", "param_dtype": "float32", "remat": True, "scan_layers": True},
    "data": {"buckets": ((448, 448),), "max_prompt_len": 384, "worker_count": 4},
}
_STAGE_RECIPE = {
    "sft": {"data": {"global_batch_size": 64},  # 500K samples / 64 = 7813 steps: one epoch
            "optimizer": {"learning_rate": 1e-5, "warmup_steps": 100, "final_learning_rate_fraction": 0.0},
            "train": {"num_steps": 7813, "checkpoint_every": 500}},
    "grpo": {"data": {"global_batch_size": 16},  # prompts per step; x G completions
             "optimizer": {"learning_rate": 1e-6, "warmup_steps": 0, "final_learning_rate_fraction": 1.0},
             "train": {"num_steps": 2000, "checkpoint_every": 100}},
}


def base_config(stage: str = "sft") -> ml_collections.ConfigDict:
    """Every field a run reads, with the paper's hyperparameters for ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: choose one of {STAGES}")
    c = config_fields.section(RunConfig)
    c.stage = stage
    for recipe in (_RECIPE, _STAGE_RECIPE[stage]):
        for name, values in recipe.items():
            c[name].update(values)
    return c


HARDWARE = ("tpu_v5p", "gpu8")


def real_size_config(stage: str, hardware: str, text: dict, checkpoint: str, train_records: str,
                     eval_records: str, num_micro_batches: int) -> ml_collections.ConfigDict:
    """A full-size run on 8 devices: a v5p-16 slice (``tpu_v5p``) or 8x 80 GB GPUs (``gpu8``).

    FSDP over the 8 devices, bf16 compute with fp32 master weights, remat and
    scanned layers (the recipe's defaults), exported in bf16; the model and
    its tokenizer come from ``checkpoint`` (a HF directory, local or a URL),
    whose text dims ``text`` records. Evaluation reads the whole eval split.
    ``num_micro_batches`` comes from tools/plan_memory.py: both targets hold
    80 GB or more per device, and the plan's per-device peaks fit both with
    the same split.
    """
    if hardware not in HARDWARE:
        raise ValueError(f"hardware={hardware!r}: choose one of {HARDWARE}")
    c = base_config(stage)
    c.mesh.update(data=1, fsdp=8, tensor=1)
    c.model.init_from = checkpoint
    c.model.text.update(text)
    c.data.tokenizer_dir = checkpoint
    c.data.records_dir = train_records
    c.eval.records_dir = eval_records
    c.sft.num_micro_batches = c.grpo.num_micro_batches = num_micro_batches
    c.export.dtype = "bfloat16"
    # At most 448 x 448 pixels = 256 image tokens per photo: the memory plan's rows (a full slot is the 448 bucket's
    # 1024 patches), and no max512 record of aspect 4:3 or longer is downscaled (512 x 384 -> 504 x 392: 252 tokens).
    c.data.processor.max_pixels = 448 * 448
    return c


def resolve(config: ml_collections.ConfigDict, num_devices: int) -> RunConfig:
    """The validated ``RunConfig`` of a config file's ConfigDict on ``num_devices`` devices.

    Checks every field's type and range (in its dataclass), then what spans
    sections: required paths, the model dims, the mesh against the devices,
    batches against the mesh and the micro-batches, the data's patching
    against the vision tower. Raises ``ConfigError`` naming the field as it
    is typed on the command line.
    """
    run = config_fields.from_section(RunConfig, config, "")
    for name in ("records_dir", "tokenizer_dir"):
        if not getattr(run.data, name):
            raise ConfigError(f"--config.data.{name}", "must be set")
    try:
        run.model.architecture()
    except qvl.ConfigError as error:
        raise ConfigError("--config.model", str(error)) from None
    try:
        sizes = run.mesh.sizes(num_devices)
    except ConfigError as error:
        raise ConfigError("--config.mesh", error.message) from None
    shards = sizes["data"] * sizes["fsdp"]
    batches = [("data.global_batch_size", run.data.global_batch_size)]
    if run.eval.records_dir:
        batches.append(("eval.batch_size", run.eval.batch_size))
    for name, rows in batches:
        if rows % shards:
            raise ConfigError(f"--config.{name}", f"{rows} does not split over data x fsdp = {shards} devices")
    micro = run.sft.num_micro_batches if run.stage == "sft" else run.grpo.num_micro_batches
    if run.data.global_batch_size % micro:
        raise ConfigError(f"--config.{run.stage}.num_micro_batches",
                          f"{micro} does not divide data.global_batch_size {run.data.global_batch_size}")
    try:
        patch = pipeline.patch_config(run.data)
    except ConfigError as error:  # an override out of range against the checkpoint's settings
        raise ConfigError(f"--config.data.processor.{error.field.split('.', 1)[-1]}", error.message) from None
    except ValueError as error:  # the checkpoint's preprocessor_config.json
        raise ConfigError("--config.data.tokenizer_dir", str(error)) from None
    vision = run.model.vision
    if not run.model.init_from and (patch.patch_size, patch.temporal_patch_size, patch.merge_size) != (
            vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size):
        raise ConfigError("--config.data.tokenizer_dir", f"{patch} does not match the vision tower's patch_size "
                          f"{vision.patch_size}, temporal_patch_size {vision.temporal_patch_size} and "
                          f"spatial_merge_size {vision.spatial_merge_size}")
    return run


def to_config_dict(run: RunConfig) -> ml_collections.ConfigDict:
    """The ConfigDict form of a resolved run (what ``config.json`` in a workdir holds)."""
    return config_fields.section(run, exclude=())
