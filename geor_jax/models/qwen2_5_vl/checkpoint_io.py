"""Load a HF Qwen2.5-VL / Qwen2-VL checkpoint directory into the NNX model and
write the model back out as one transformers can load.

Loading streams one tensor at a time from memory-mapped safetensors: each is
converted to the NNX layout on the host and placed straight onto its devices
in its final sharding, so host memory holds at most one tensor (one layer of
a stacked tensor) beyond what the OS page cache maps. Before any tensor is
read, every name and header shape is checked against the config.

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
import ml_dtypes
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from geor_jax import sharding as sharding_lib
from geor_jax.models.qwen2_5_vl import safetensors_io
from geor_jax.models.qwen2_5_vl.config import Qwen2VLConfig, load_config, to_hf_dict
from geor_jax.models.qwen2_5_vl.model import Qwen2VL

_RENAMES = {
    ("patch_embed",): ("patch_embed", "proj"),
    ("merger", "fc1"): ("merger", "mlp", "0"),
    ("merger", "fc2"): ("merger", "mlp", "2"),
}
_FLOAT_DTYPES = {np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}
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


def to_hf_layout(array: np.ndarray, var: nnx.Variable, hf_shape: tuple[int, ...]) -> np.ndarray:
    """NNX layout -> HF tensor of ``hf_shape`` (``_hf_shape``); the inverse of ``to_nnx_layout``."""
    input_dims = var.get_metadata("input_dims", None)
    if input_dims is not None:
        in_flat = math.prod(array.shape[:input_dims])
        array = array.reshape(in_flat, -1).T
    return array.reshape(hf_shape)


def _hf_shape(path: tuple, var: nnx.Variable, shape: tuple[int, ...], config: Qwen2VLConfig) -> tuple[int, ...]:
    """The exact HF shape of the tensor behind parameter ``path`` whose (per-layer) NNX shape is ``shape``.

    Linear kernels (in..., out...) are HF (out_flat, in_flat), the patch
    embedding is the 5-D conv (hidden, channels, temporal, patch, patch),
    biases are flat, and norms and embeddings keep their NNX shape. Saving
    writes these shapes and loading demands them exactly, so a transposed or
    reshaped tensor of the right size is caught, except a transposed square
    weight (e.g. hidden x hidden), which no shape check can see.
    """
    if path[:2] == ("vision", "patch_embed"):
        v = config.vision
        return (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    input_dims = var.get_metadata("input_dims", None)
    if input_dims is not None:
        return (math.prod(shape[input_dims:]), math.prod(shape[:input_dims]))
    if path[-1] == "bias":
        return (math.prod(shape),)
    return tuple(shape)


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


def _check_tensors(
    checkpoint_dir, reader: safetensors_io.CheckpointReader, available: dict[str, str], state: nnx.State, model: Qwen2VL
) -> list[tuple]:
    """(path, variable, HF names, per-layer NNX shape) per parameter, after checking every name and header shape.

    Runs on the headers alone, before any tensor is read, so a checkpoint that
    does not fit fails at once rather than after most of it has been loaded.
    """
    plan, used = [], set()
    for path, var in nnx.to_flat_state(state):
        names = _hf_names(path, model)
        missing = [n for n in names if n not in available]
        if missing:
            raise KeyError(f"checkpoint {checkpoint_dir} lacks tensor(s) {missing[:3]} for parameter {'/'.join(map(str, path))}")
        layer_shape = var.shape[1:] if _is_stacked(path, model) else var.shape
        expected = _hf_shape(path, var, layer_shape, model.config)
        for name in names:
            got, dtype = reader.shape(available[name]), reader.dtype(available[name])
            if got != expected:
                message = f"shape {got}, but parameter {'/'.join(map(str, path))} needs HF shape {expected}"
                raise safetensors_io.CheckpointFileError(reader.file(available[name]), message, available[name])
            if dtype not in _FLOAT_DTYPES:  # every parameter is a float: an integer tensor would be cast silently
                message = f"dtype {dtype.name}, but parameter {'/'.join(map(str, path))} needs a float dtype"
                raise safetensors_io.CheckpointFileError(reader.file(available[name]), message, available[name])
        used.update(names)
        plan.append((path, var, names, layer_shape))
    unexpected = set(available) - used
    if model.config.text.tie_word_embeddings:
        unexpected.discard("lm_head.weight")
    if unexpected:
        raise ValueError(f"checkpoint {checkpoint_dir} has tensors the model does not use: {sorted(unexpected)[:5]}")
    return plan


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
    tensors the model needs but the checkpoint lacks, ``ValueError`` for
    tensors it does not use, and ``CheckpointFileError`` (a
    ``ValueError``) for a malformed file or a tensor whose shape is not exactly
    the one ``_hf_shape`` derives from the config, naming the file and tensor.
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
    plan = _check_tensors(checkpoint_dir, reader, available, state, abstract)
    for path, var, names, layer_shape in plan:
        target = flat_shardings[path].get_value()

        def read(name):
            return to_nnx_layout(reader.get(available[name]), var, layer_shape).astype(var.dtype)

        if _is_stacked(path, abstract):
            layer_sharding = (
                NamedSharding(target.mesh, PartitionSpec(*target.spec[1:])) if isinstance(target, NamedSharding) else target
            )
            layer_arrays = [_place(read(name), layer_sharding) for name in names]
            value = jax.jit(lambda *xs: jnp.stack(xs), out_shardings=target)(*layer_arrays)
            del layer_arrays
        else:
            value = _place(read(names[0]), target)
        var.set_value(value)
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
            hf_shape = _hf_shape(path, var, layer_value.shape, model.config)
            host = to_hf_layout(np.asarray(jax.device_get(layer_value)), var, hf_shape)
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

