"""The policy a run exports: a HF checkpoint that transformers and vLLM serve as it is.

``<workdir>/hf`` holds config.json (with its ``dtype``), the safetensors
shards, the tokenizer with its chat template, the image processor settings
the model was trained with (``preprocessor_config.json``, so
``AutoProcessor.from_pretrained`` sizes images as training did) and
``generation_config.json``: greedy decoding that
stops at ``<|im_end|>`` / ``<|endoftext|>``, pads with ``<|endoftext|>``,
never emits the image / video placeholders and writes up to
``eval.max_new_tokens`` new tokens, i.e. how geor_jax answers when it
evaluates. transformers' ``generate`` takes all of it as its defaults; vLLM
reads its sampling defaults (and only those) from the same file.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import transformers

from geor_jax import checkpoint, config_fields, paths
from geor_jax.data import patches
from geor_jax.data import tokenizer as tokenizer_lib
from geor_jax.models.qwen2_5_vl import peft_io

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """How the exported checkpoint is written. dtype: its tensors' dtype (training keeps float32 masters;
    bfloat16 halves the files and is what the 3B / 7B configs serve)."""

    dtype: str = config_fields.field("float32", config_fields.one_of(*DTYPES))

    def __post_init__(self):
        config_fields.check(self)


def generation_config(tokenizer: tokenizer_lib.Tokenizer, max_new_tokens: int) -> transformers.GenerationConfig:
    """Greedy decoding as geor_jax evaluates (``sampling.SamplingConfig(greedy=True)``): stop at the
    tokenizer's end ids, pad with its pad id, suppress the image / video placeholders."""
    ids = tokenizer.special_ids
    return transformers.GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=list(ids.eos),
                                         pad_token_id=ids.pad, bos_token_id=ids.endoftext,
                                         suppress_tokens=sorted({ids.image_pad, ids.video_pad}))


def export_policy(graphdef, params, tokenizer: tokenizer_lib.Tokenizer, patch_config: patches.PatchConfig,
                  directory: str, config: ExportConfig, max_new_tokens: int) -> None:
    """Write the policy to ``directory`` (local or a URL) as a self-contained HF checkpoint.

    Every process takes part (the params are gathered); process 0 writes,
    into a local folder uploaded at the end when ``directory`` is a URL.
    """
    writer = jax.process_index() == 0
    with paths.staged(directory, upload=writer) as local:
        checkpoint.export_hf(graphdef, params, local, dtype=DTYPES[config.dtype])
        if writer:
            tokenizer.hf.save_pretrained(local)
            with open(os.path.join(local, patches.PREPROCESSOR_FILE), "w", encoding="utf-8") as f:
                json.dump(patches.preprocessor_dict(patch_config), f, indent=2)
            generation_config(tokenizer, max_new_tokens).save_pretrained(local)


def export_adapter(model, directory: str, *, base_model_name_or_path: str | None = None) -> None:
    """Write ``model``'s LoRA adapters alone to ``directory`` (local or a URL) in PEFT's format.

    Every process takes part (the adapters are gathered); process 0 writes,
    into a local folder uploaded at the end when ``directory`` is a URL.
    """
    writer = jax.process_index() == 0
    with paths.staged(directory, upload=writer) as local:
        peft_io.save_adapter(model, local, base_model_name_or_path=base_model_name_or_path)
