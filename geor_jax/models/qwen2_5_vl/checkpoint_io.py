"""Load a HF Qwen2.5-VL / Qwen2-VL checkpoint directory into the NNX model and
write the model back out as one transformers can load.

Loading streams one tensor at a time from memory-mapped safetensors: each is
converted to the NNX layout on the host and placed straight onto its devices
in its final sharding, so host memory holds at most one tensor (one layer of
a stacked tensor) beyond what the OS page cache maps.

Name mapping: NNX paths mirror the HF module names, with ``kernel``
(transposed Linear weight), ``scale`` (norm weight) and the renames in
``_RENAMES``. Both the Hub layout (``visual.*``, ``model.layers.*``) and the
transformers 5.x in-memory layout (``model.visual.*``,
``model.language_model.*``) are accepted; files are written in the Hub layout.
"""

from __future__ import annotations

import json
import math
import os
from typing import Iterator

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from geor_jax import sharding as sharding_lib
from geor_jax.models.qwen2_5_vl import safetensors_io
from geor_jax.models.qwen2_5_vl.config import load_config, to_hf_dict
from geor_jax.models.qwen2_5_vl.model import Qwen2VL

_RENAMES = {
    ("patch_embed",): ("patch_embed", "proj"),
    ("merger", "fc1"): ("merger", "mlp", "0"),
    ("merger", "fc2"): ("merger", "mlp", "2"),
}
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "embed_tokens": "embed_tokens.weight"}


def hf_name(path: tuple) -> str:
    """HF tensor name of the NNX parameter at ``path`` (layer index included)."""
    parts = [str(p) for p in path]
    root, module, leaf = parts[0], parts[1:-1], parts[-1]
    for old, new in _RENAMES.items():
        if tuple(module[: len(old)]) == old:
            module = list(new) + module[len(old) :]
    prefix = {"vision": ["visual"], "text": ["model"], "lm_head": ["lm_head"]}[root]
    return ".".join(prefix + module + [_LEAF_NAMES[leaf]])


def normalize_hf_name(name: str) -> str:
    """Map transformers 5.x in-memory names onto the Hub checkpoint names."""
    if name.startswith("model.visual."):
        return name[len("model.") :]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    return name


def to_nnx_layout(array: np.ndarray, var: nnx.Variable, shape: tuple[int, ...]) -> np.ndarray:
    """HF tensor -> NNX layout: Linear/conv weights (out, in...) become kernels (in..., out...)."""
    if var.get_metadata("input_dims", None) is not None:
        array = array.reshape(array.shape[0], -1).T
    return array.reshape(shape)


def to_hf_layout(array: np.ndarray, var: nnx.Variable, hf_shape: tuple[int, ...] | None) -> np.ndarray:
    """NNX layout -> HF tensor (inverse of ``to_nnx_layout``); ``hf_shape`` None means a 2-D weight/1-D vector."""
    input_dims = var.get_metadata("input_dims", None)
    if input_dims is not None:
        in_flat = math.prod(array.shape[:input_dims])
        array = array.reshape(in_flat, -1).T
    return array.reshape(hf_shape) if hf_shape is not None else array


def _hf_shape(path: tuple, model: Qwen2VL) -> tuple[int, ...] | None:
    """HF shape where it is not the 2-D/1-D default: flat biases, the 5-D patch conv."""
    if path[-1] == "bias":
        return (-1,)
    if path[:2] == ("vision", "patch_embed"):
        v = model.config.vision
        return (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    return None


def _is_stacked(path: tuple, model: Qwen2VL) -> bool:
    return path[:2] == ("text", "layers") and model.text.scan_layers


def _hf_names(path: tuple, model: Qwen2VL) -> list[str]:
    """One name per tensor; a scanned (stacked) parameter maps to one name per layer."""
    if _is_stacked(path, model):
        return [hf_name(path[:2] + (layer,) + path[2:]) for layer in range(model.config.text.num_layers)]
    return [hf_name(path)]


def _place(host: np.ndarray, sharding) -> jax.Array:
    """Put a host array onto devices in ``sharding``, copying only each device's slice."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def load_hf_checkpoint(
    checkpoint_dir: str | os.PathLike,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    remat: bool = False,
    scan_layers: bool = False,
    mesh: Mesh | None = None,
    rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
) -> Qwen2VL:
    """Build a ``Qwen2VL`` from a local HF checkpoint directory (config.json + safetensors).

    With ``mesh``, every parameter is placed in the sharding the partition
    ``rules`` give it; without, on the default device. Raises ``KeyError`` for
    tensors the model needs but the checkpoint lacks, and ``ValueError`` for
    unknown tensors or shape mismatches.
    """
    config = load_config(checkpoint_dir)
    reader = safetensors_io.CheckpointReader(checkpoint_dir)
    available = {normalize_hf_name(name): name for name in reader.names()}
    abstract = nnx.eval_shape(
        lambda: Qwen2VL(config, dtype=dtype, param_dtype=param_dtype, remat=remat, scan_layers=scan_layers, rngs=nnx.Rngs(0))
    )
    graphdef, state = nnx.split(abstract)
    if mesh is not None:
        shardings = sharding_lib.state_shardings(state, mesh, rules)
    else:
        device = SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda v: v.replace(device), state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    flat_shardings = dict(nnx.to_flat_state(shardings))
    used = set()
    for path, var in nnx.to_flat_state(state):
        names = _hf_names(path, abstract)
        missing = [n for n in names if n not in available]
        if missing:
            raise KeyError(f"checkpoint {checkpoint_dir} lacks tensor(s) {missing[:3]} for parameter {'/'.join(map(str, path))}")
        used.update(names)
        target = flat_shardings[path].get_value()
        stacked = _is_stacked(path, abstract)
        layer_shape = var.shape[1:] if stacked else var.shape

        def read(name):
            array = reader.get(available[name])
            if math.prod(array.shape) != math.prod(layer_shape):
                raise ValueError(f"tensor {name} has shape {array.shape}, parameter {'/'.join(map(str, path))} needs {layer_shape}")
            return to_nnx_layout(array, var, layer_shape).astype(var.dtype)

        if stacked:
            layer_sharding = (
                NamedSharding(target.mesh, PartitionSpec(*target.spec[1:])) if isinstance(target, NamedSharding) else target
            )
            layer_arrays = [_place(read(name), layer_sharding) for name in names]
            value = jax.jit(lambda *xs: jnp.stack(xs), out_shardings=target)(*layer_arrays)
            del layer_arrays
        else:
            value = _place(read(names[0]), target)
        var.set_value(value)
    unexpected = set(available) - used
    if config.text.tie_word_embeddings:
        unexpected.discard("lm_head.weight")
    if unexpected:
        raise ValueError(f"checkpoint has tensors the model does not use: {sorted(unexpected)[:5]}")
    return nnx.merge(graphdef, state)


def iter_hf_tensors(model: Qwen2VL, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, host array) for every parameter, one tensor at a time, optionally cast to ``dtype``."""
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = var.get_value()
        if not value.is_fully_addressable:
            value = multihost_utils.process_allgather(value, tiled=True)
        names = _hf_names(path, model)
        for layer, name in enumerate(names):
            layer_value = value[layer] if _is_stacked(path, model) else value
            host = to_hf_layout(np.asarray(jax.device_get(layer_value)), var, _hf_shape(path, model))
            yield name, host if dtype is None else host.astype(dtype)


def save_hf_checkpoint(model: Qwen2VL, out_dir: str | os.PathLike, *, max_shard_bytes: int = 2 << 30, dtype=None) -> None:
    """Write ``model`` as a HF checkpoint directory (config.json, sharded safetensors + index).

    ``dtype`` (e.g. ``jnp.bfloat16``) casts the saved tensors; by default they
    keep the parameter dtype. In multi-process runs only process 0 writes.
    """
    out_dir = os.fspath(out_dir)
    write = jax.process_index() == 0
    if write:
        os.makedirs(out_dir, exist_ok=True)
    shard_names: list[list[str]] = []
    current: list[tuple[str, np.ndarray]] = []
    total = 0

    def flush():
        if write:
            path = os.path.join(out_dir, f"shard-{len(shard_names)}.tmp")
            safetensors_io.write_safetensors(path, current)
        shard_names.append([name for name, _ in current])

    for name, array in iter_hf_tensors(model, dtype):
        if current and sum(a.nbytes for _, a in current) + array.nbytes > max_shard_bytes:
            flush()
            current = []
        current.append((name, array))
        total += array.nbytes
    flush()
    if not write:
        return
    weight_map = {}
    for index, names in enumerate(shard_names):
        final = f"model-{index + 1:05d}-of-{len(shard_names):05d}.safetensors"
        os.replace(os.path.join(out_dir, f"shard-{index}.tmp"), os.path.join(out_dir, final))
        weight_map.update({name: final for name in names})
    with open(os.path.join(out_dir, safetensors_io.INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    hf_config = to_hf_dict(model.config)
    param_dtype = jnp.dtype(dtype) if dtype is not None else nnx.to_flat_state(nnx.state(model, nnx.Param))[0][1].dtype
    hf_config["dtype"] = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[jnp.dtype(param_dtype).name]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)

