"""LoRA adapters in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

The files are what ``peft`` (0.21) writes for transformers 5's
``Qwen2_5_VLForConditionalGeneration``, so ``PeftModel.from_pretrained``
loads them onto the base model: tensors ``base_model.model.<module>.lora_A.weight``
(rank, in_features) and ``...lora_B.weight`` (out_features, rank), where
<module> is the module's name in transformers 5 (``model.language_model.layers.0.self_attn.q_proj``,
``model.visual.blocks.0.attn.qkv``, ``model.visual.merger.mlp.0``), and
``target_modules`` a regular expression that matches exactly the adapted
modules, in that layout and in the older one (``model.layers.*``,
``visual.*``), which loading accepts too.

Loading fills the adapters ``geor_jax.lora.add_adapters`` put on a model and
checks that the file fits them exactly: rank, alpha, the set of modules and
every shape. PEFT options this port does not implement (rsLoRA, DoRA,
per-module ranks, trained biases, extra saved modules) are refused by name.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from geor_jax.models.qwen2_5_vl import safetensors_io
from geor_jax.models.qwen2_5_vl.checkpoint_io import hf_names, normalize_hf_name
from geor_jax.models.qwen2_5_vl.layers import Dense
from geor_jax.sharding import LOGICAL_AXES

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
_SUFFIXES = {".lora_A.weight": "a", ".lora_B.weight": "b"}

# target_modules: every projection a target name can cover, under either transformers layout ("(?:.*\.)?").
_TEXT_MODULE = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
_VISION_BLOCK_PATTERN = r"(?:.*\.)?blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.(?:gate_proj|up_proj|down_proj|fc1|fc2))"
_MERGER_PATTERN = r"(?:.*\.)?merger\.mlp\.(?:0|2)"
# PEFT fields whose non-default values change the model in ways this port does not implement.
_UNSUPPORTED = {"use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False,
                "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None, "layer_replication": None}


def _adapted(model: nnx.Module) -> list[tuple[tuple, Dense]]:
    return [(path, node) for path, node in nnx.iter_graph(model) if isinstance(node, Dense) and node.lora is not None]


def _stacked(dense: Dense) -> bool:
    """Whether the adapter carries a leading layer axis (a scanned stack)."""
    return dense.lora.lora_a.get_metadata(LOGICAL_AXES)[0] == "layers"


def _module_names(path: tuple, model) -> list[str]:
    """The Hub-layout module name of the Dense at ``path``, one per layer of a scanned stack."""
    return [name.removesuffix(".weight") for name in hf_names(path + ("kernel",), model)]


def _transformers_name(hub_name: str) -> str:
    """Hub layout -> transformers 5's module names (``normalize_hf_name`` maps back)."""
    if hub_name.startswith("visual."):
        return "model." + hub_name
    if hub_name.startswith("model."):
        return "model.language_model." + hub_name[len("model."):]
    return hub_name


def _target_modules(model, adapted) -> str:
    """A regex matching exactly the adapted modules' names (PEFT matches a string with ``re.fullmatch``)."""
    text = sorted({path[-1] for path, _ in adapted if path[0] == "text"})
    patterns = []
    if text:
        by_block = {}
        for name in text:
            by_block.setdefault(_TEXT_MODULE[name], []).append(name)
        inner = "|".join(f"{block}\\.(?:{'|'.join(names)})" for block, names in sorted(by_block.items()))
        patterns.append(rf"(?:.*\.)?layers\.\d+\.(?:{inner})")
    if any(path[:2] == ("vision", "blocks") for path, _ in adapted):
        patterns.append(_VISION_BLOCK_PATTERN)
    if any(path[:2] == ("vision", "merger") for path, _ in adapted):
        patterns.append(_MERGER_PATTERN)
    return "|".join(patterns)


def _shared(adapted, attribute: str):
    values = {getattr(dense.lora, attribute) for _, dense in adapted}
    if len(values) != 1:
        raise ValueError(f"adapters differ in {attribute} ({sorted(values)}): PEFT's format holds one value")
    return values.pop()


def _host(value: jax.Array) -> np.ndarray:
    if not value.is_fully_addressable:
        value = multihost_utils.process_allgather(value, tiled=True)
    return np.asarray(jax.device_get(value), np.float32)


def save_adapter(model, directory: str | os.PathLike, *, base_model_name_or_path: str | None = None) -> None:
    """Write ``model``'s adapters to ``directory`` as a PEFT LoRA adapter (float32). Only process 0 writes."""
    adapted = _adapted(model)
    if not adapted:
        raise ValueError("the model has no LoRA adapters to save")
    rank, scale = _shared(adapted, "rank"), _shared(adapted, "scale")
    alpha = scale * rank
    tensors = []
    for path, dense in adapted:
        a, b = _host(dense.lora.lora_a.get_value()), _host(dense.lora.lora_b.get_value())
        names = _module_names(path, model)
        if not _stacked(dense):
            a, b = a[None], b[None]
        for name, a_layer, b_layer in zip(names, a, b):
            key = PREFIX + _transformers_name(name)
            tensors.append((key + ".lora_A.weight", np.ascontiguousarray(a_layer.reshape(-1, rank).T)))
            tensors.append((key + ".lora_B.weight", np.ascontiguousarray(b_layer.reshape(rank, -1).T)))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path or None,
        "r": rank, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": _shared(adapted, "dropout"), "target_modules": _target_modules(model, adapted),
        "init_lora_weights": True, "inference_mode": True, "layers_to_transform": None, "layers_pattern": None,
        "revision": None, **_UNSUPPORTED,
    }
    if jax.process_index() != 0:
        return
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    safetensors_io.write_safetensors(os.path.join(directory, WEIGHTS_FILE), tensors)
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)


def read_config(directory: str | os.PathLike) -> dict:
    """A PEFT LoRA adapter's config, refused (ValueError naming the field) if it uses an option not supported here."""
    path = os.path.join(os.fspath(directory), CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: not a PEFT adapter directory")
    try:
        with open(path) as f:
            config = json.load(f)
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type {config.get('peft_type') if isinstance(config, dict) else None!r}, "
                         "only LORA adapters load")
    for field, default in _UNSUPPORTED.items():
        if config.get(field, default) not in (default, None, {}, False):
            raise ValueError(f"{path}: {field}={config[field]!r} is not supported (only {default!r})")
    for field in ("r", "lora_alpha"):
        if not isinstance(config.get(field), (int, float)) or config[field] <= 0:
            raise ValueError(f"{path}: {field} must be a positive number, got {config.get(field)!r}")
    return config


def load_adapter(model, directory: str | os.PathLike) -> None:
    """Fill ``model``'s adapters (``lora.add_adapters``) from the PEFT adapter in ``directory``, in place.

    The adapter must fit them exactly: its rank and alpha, the set of modules
    it adapts and each tensor's shape; anything else raises ``ValueError``
    naming the file, the tensor or the field.
    """
    directory = os.fspath(directory)
    config = read_config(directory)
    adapted = _adapted(model)
    if not adapted:
        raise ValueError("the model has no LoRA adapters to load into (add them first: lora.add_adapters)")
    rank, scale = _shared(adapted, "rank"), _shared(adapted, "scale")
    if config["r"] != rank or not math.isclose(config["lora_alpha"] / config["r"], scale, rel_tol=1e-6):
        raise ValueError(f"adapter {directory} has r={config['r']}, lora_alpha={config['lora_alpha']}, but the model's "
                         f"adapters have rank {rank}, alpha {scale * rank:g}")
    reader = safetensors_io.CheckpointReader(directory, single_file=WEIGHTS_FILE)
    slots = {}  # Hub module name -> (dense, whether its adapter is a stack); a stack's names in layer order
    for path, dense in adapted:
        for name in _module_names(path, model):
            slots[name] = (dense, _stacked(dense))
    found: dict[str, dict[str, str]] = {}
    for key in reader.names():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if not key.startswith(PREFIX) or suffix is None:
            raise ValueError(f"{reader.file(key)}: tensor {key} is not a LoRA weight "
                             f"({PREFIX}<module>.lora_A.weight / .lora_B.weight)")
        module = normalize_hf_name(key[len(PREFIX):-len(suffix)] + ".weight").removesuffix(".weight")
        if module not in slots:
            raise ValueError(f"{reader.file(key)}: tensor {key} adapts module {module}, which the model does not "
                             "adapt (its LoRA targets differ)")
        found.setdefault(module, {})[_SUFFIXES[suffix]] = key
    missing = sorted(name for name in slots if set(found.get(name, {})) != {"a", "b"})
    if missing:
        raise ValueError(f"adapter {directory} lacks lora_A / lora_B weights for {len(missing)} adapted module(s), "
                         f"e.g. {missing[0]} (its LoRA targets differ)")
    values: dict[int, dict[str, list]] = {}
    for name, (dense, stacked) in slots.items():
        a_shape, b_shape = dense.lora.lora_a.shape, dense.lora.lora_b.shape
        if stacked:
            a_shape, b_shape = a_shape[1:], b_shape[1:]
        expected = {"a": (rank, math.prod(a_shape[:-1])), "b": (math.prod(b_shape[1:]), rank)}
        per_module = values.setdefault(id(dense), {"dense": dense, "a": [], "b": []})
        for part, key in found[name].items():
            if reader.shape(key) != expected[part]:
                raise ValueError(f"{reader.file(key)}: tensor {key} has shape {reader.shape(key)}, but module "
                                 f"{name} needs {expected[part]}")
            array = np.asarray(reader.get(key), np.float32).T
            per_module[part].append(array.reshape(a_shape if part == "a" else b_shape))
    for entry in values.values():
        lora = entry["dense"].lora
        for part, var in (("a", lora.lora_a), ("b", lora.lora_b)):
            host = np.stack(entry[part]) if _stacked(entry["dense"]) else entry[part][0]
            target = var.get_value().sharding
            var.set_value(jax.make_array_from_callback(host.shape, target, lambda index, h=host: h[index]))
