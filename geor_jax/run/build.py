"""A run's parts from its config: the model (loaded or random), the optimizer, the pipelines, a policy to evaluate.

train_loop, launch/evaluate.py, launch/demo.py and the tools all build
through here, so a config means the same thing to each of them.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from geor_jax import config_fields, sharding, train_state
from geor_jax.data import pipeline
from geor_jax.data import tokenizer as tokenizer_lib
from geor_jax.models import qwen2_5_vl as qvl

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_DTYPE = config_fields.one_of(*DTYPES)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The policy: a HF checkpoint directory (``init_from``) or a random model of ``text`` / ``vision`` dims.

    dtype / param_dtype: compute and storage dtypes. ``text`` / ``vision``
    take the vocabulary, image token ids and the vision output width from
    the tokenizer and the text width; with ``init_from`` the checkpoint's own
    config.json decides the architecture and they are unused.
    """

    init_from: str = ""
    dtype: str = config_fields.field("bfloat16", _DTYPE)
    param_dtype: str = config_fields.field("float32", _DTYPE)
    remat: bool = True
    scan_layers: bool = True
    text: qvl.TextConfig = config_fields.field(qvl.TextConfig(), exclude=("vocab_size",))
    vision: qvl.VisionConfig = config_fields.field(qvl.VisionConfig(), exclude=("variant", "out_hidden_size"))

    def __post_init__(self):
        config_fields.check(self)

    def architecture(self, vocab_size: int | None = None, **token_ids) -> qvl.Qwen2VLConfig:
        """The Qwen2.5-VL config of a random init (validated; ``qvl.ConfigError`` names the field)."""
        text = self.text if vocab_size is None else dataclasses.replace(self.text, vocab_size=vocab_size)
        vision = dataclasses.replace(self.vision, out_hidden_size=text.hidden_size)
        return qvl.Qwen2VLConfig(text=text, vision=vision, **token_ids)

    def options(self) -> dict:
        """Keyword arguments of ``Qwen2VL`` / ``load_hf_checkpoint`` (dtypes, remat, layout)."""
        return dict(dtype=DTYPES[self.dtype], param_dtype=DTYPES[self.param_dtype], remat=self.remat,
                    scan_layers=self.scan_layers)


_TOKEN_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def build_model(config: ModelConfig, tokenizer: tokenizer_lib.Tokenizer, mesh, seed: int = 0) -> qvl.Qwen2VL:
    """Load ``config.init_from`` (a HF checkpoint dir) or build a random model (``seed``), sharded on ``mesh``.

    A loaded checkpoint must agree with the tokenizer on vocabulary size and
    image token id, or the prompts would not mean what the model learned.
    """
    if config.init_from:
        model = qvl.load_hf_checkpoint(config.init_from, mesh=mesh, **config.options())
        ids = tokenizer.special_ids
        if model.config.text.vocab_size < tokenizer.vocab_size or model.config.image_token_id != ids.image_pad:
            raise config_fields.ConfigError(
                "--config.model.init_from",
                f"checkpoint {config.init_from} (vocab {model.config.text.vocab_size}, image token "
                f"{model.config.image_token_id}) does not match tokenizer {tokenizer.hf.name_or_path} "
                f"(vocab {tokenizer.vocab_size}, image token {ids.image_pad})")
        return model
    overrides = tokenizer.special_ids.model_config_overrides()
    architecture = config.architecture(tokenizer.vocab_size, **{k: overrides[k] for k in _TOKEN_IDS})
    return sharding.create_sharded_model(
        lambda: qvl.Qwen2VL(architecture, rngs=nnx.Rngs(seed), **config.options()), mesh)


def load_policy(config: ModelConfig, hf_dir: str, tokenizer_dir: str, mesh) -> tuple[qvl.Qwen2VL, tokenizer_lib.Tokenizer]:
    """A HF checkpoint directory as ``config`` builds models (dtypes, layout, sharding on ``mesh``),
    with the tokenizer of ``tokenizer_dir``, checked against each other as in ``build_model``."""
    tokenizer = tokenizer_lib.load_tokenizer(tokenizer_dir)
    return build_model(dataclasses.replace(config, init_from=hf_dir), tokenizer, mesh), tokenizer


def optimizer(config: train_state.OptimizerConfig, num_steps: int):
    """The optax optimizer of ``config``, its cosine ending at the run's ``num_steps``."""
    return dataclasses.replace(config, total_steps=max(num_steps, config.warmup_steps + 1)).make()


def train_pipeline(data: pipeline.PipelineConfig) -> pipeline.PipelineConfig:
    """The training pipeline: shuffled, endless, whole batches."""
    return dataclasses.replace(data, shuffle=True, num_epochs=None, drop_remainder=True)


def eval_pipeline(data: pipeline.PipelineConfig, records_dir: str, split: str, batch_size: int) -> pipeline.PipelineConfig:
    """An evaluation pipeline over ``records_dir``/``split``: in order, one pass, the last batch padded."""
    return dataclasses.replace(data, records_dir=records_dir, split=split, global_batch_size=batch_size,
                               shuffle=False, num_epochs=1, drop_remainder=False, worker_count=0)
