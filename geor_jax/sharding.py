"""Meshes, logical-axis partition rules and sharded model creation.

Model parameters carry ``logical_axes`` metadata (e.g. ``("embed", "mlp")``).
Partition rules map each logical name to mesh axes; a mesh axis is dropped for
a dimension it does not divide (e.g. 2 KV heads over 4 tensor shards), when
an earlier dimension already uses it or when the mesh lacks it, so every rule
set works on every model size and mesh shape. ``constrain`` applies the same
rules to activations, under the mesh ``jax.set_mesh`` makes current.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from geor_jax import config_fields

# Metadata key on nnx.Param holding one logical axis name (or None) per dimension.
LOGICAL_AXES = "logical_axes"

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# FSDP shards the model width, tensor parallelism the heads / MLP / vocab.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vision_patch", None),
    ("vision_embed", "fsdp"),
    ("vision_merged", "fsdp"),
    ("vision_mlp", "tensor"),
    ("vision_heads", "tensor"),
)


# Environment variables that mean "this process is one of several": TPU pod
# workers, Slurm tasks, Open MPI ranks. jax.distributed.initialize() reads
# the topology from them by itself.
_CLUSTER_SIZE_VARIABLES = ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _cluster_detected() -> bool:
    for name in _CLUSTER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        size = len(value.split(",")) if name == "TPU_WORKER_HOSTNAMES" else int(value or 1)
        if size > 1:
            return True
    return False


def initialize_distributed(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> tuple[int, int]:
    """Join a multi-process run, the same call on TPU pods, GPU clusters and one host.

    With explicit arguments (multi-node GPU: coordinator ``host:port``, the
    process count and this process's id) they are passed on. Without them,
    a TPU pod / Slurm / MPI environment is detected and JAX reads its
    topology; on a single host this is a no-op. CPU processes exchange data
    through gloo. Returns (process_index, process_count).
    """
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if explicit or _cluster_detected():
        # Only the CPU client reads this; GPU/TPU collectives are unaffected.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
        jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})
    return jax.process_index(), jax.process_count()


def _mesh_size(size: int) -> str | None:
    return None if size == -1 or size >= 1 else f"must be >= 1, or -1 for all remaining devices, got {size}"


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes (``make_mesh``); one may be -1: all remaining devices."""

    data: int = config_fields.field(1, _mesh_size)
    fsdp: int = config_fields.field(-1, _mesh_size)
    tensor: int = config_fields.field(1, _mesh_size)

    def __post_init__(self):
        config_fields.check(self)
        if [self.data, self.fsdp, self.tensor].count(-1) > 1:
            raise config_fields.ConfigError("MeshConfig.fsdp", "at most one mesh axis size may be -1")

    def sizes(self, num_devices: int) -> dict[str, int]:
        """{axis: size} on ``num_devices`` devices, or ConfigError if they do not use them exactly."""
        sizes = dataclasses.asdict(self)
        known = math.prod(v for v in sizes.values() if v != -1)
        sizes = {k: num_devices // known if v == -1 else v for k, v in sizes.items()}
        if num_devices % known or math.prod(sizes.values()) != num_devices:
            raise config_fields.ConfigError("MeshConfig.data", f"{dataclasses.asdict(self)} does not use exactly "
                                            f"{num_devices} devices")
        return sizes

    def make(self, devices: Sequence[jax.Device] | None = None) -> Mesh:
        """The mesh over ``devices`` (default: all)."""
        return make_mesh(self.data, self.fsdp, self.tensor, devices)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types; one size may be -1 (use the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis size may be -1")
    known = math.prod(s for s in sizes if s != -1)
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not use exactly {len(devices)} devices")
    grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> PartitionSpec:
    """PartitionSpec for a value with the given logical axes and shape, without trailing Nones."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape):
        target = table.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        chosen = []
        for axis in targets:
            if mesh.shape.get(axis, 1) == 1 or axis in used:
                continue
            if size % (mesh.shape[axis] * math.prod(mesh.shape[a] for a in chosen)) == 0:
                chosen.append(axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    # Canonical form, the one jit gives its outputs: P("fsdp", None) places
    # like P("fsdp") but compares unequal, so a state placed with it would
    # not match the state a train step returns (another jit cache entry).
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def constrain(x: jax.Array, axes: Sequence[str | None], rules: Rules = DEFAULT_RULES) -> jax.Array:
    """``x`` constrained to the sharding its logical ``axes`` map to on the current mesh (``jax.set_mesh``).

    XLA otherwise lets activations follow whatever sharding reaches them
    first: the token embedding's lookup hands on the table's FSDP-sharded
    width, and the whole forward and backward then run on all rows with the
    width split (full-batch logits and MLP activations on every device).
    Without a mesh (single-device use) ``x`` is returned unchanged.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh, rules))


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """NamedSharding for every variable of ``state`` (replicated when it has no logical axes)."""

    def sharding_of(var):
        axes = var.get_metadata(LOGICAL_AXES, None) if isinstance(var, nnx.Variable) else None
        shape = var.shape if hasattr(var, "shape") else ()
        spec = logical_to_spec(axes, shape, mesh, rules) if axes is not None else PartitionSpec()
        return var.replace(NamedSharding(mesh, spec)) if isinstance(var, nnx.Variable) else NamedSharding(mesh, spec)

    return jax.tree.map(sharding_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_sharded_model(make_model: Callable[[], nnx.Module], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.Module:
    """Build a model with every parameter created directly in its sharded layout."""
    graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
    shardings = state_shardings(abstract_state, mesh, rules)

    @jax.jit
    def build():
        state = nnx.state(make_model())
        return jax.lax.with_sharding_constraint(state, shardings)

    with jax.set_mesh(mesh):
        state = build()
    return nnx.merge(graphdef, state)


def to_host(x) -> np.ndarray:
    """A (possibly multi-host) global array's full value as NumPy, on every host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def gather_strings(strings: Sequence[str]) -> list[str]:
    """Every process's ``strings``, concatenated in process order, on every process.

    The host-side counterpart of ``to_host`` for a batch's per-host strings
    (ids, place names): UTF-8 bytes padded to the longest, gathered as one
    uint8 array. A single process gets its own list back.
    """
    strings = [str(s) for s in strings]
    if jax.process_count() == 1:
        return strings
    encoded = [s.encode("utf-8") for s in strings]
    counts = multihost_utils.process_allgather(np.array([len(encoded), max(map(len, encoded), default=0)]))
    rows, width = int(np.max(counts[:, 0])), max(int(np.max(counts[:, 1])), 1)
    table, lengths = np.zeros((rows, width), np.uint8), np.zeros(rows, np.int32)
    for i, data in enumerate(encoded):
        table[i, :len(data)] = np.frombuffer(data, np.uint8)
        lengths[i] = len(data)
    tables, all_lengths = multihost_utils.process_allgather((table, lengths))
    return [bytes(tables[p, i, :all_lengths[p, i]]).decode("utf-8")
            for p in range(len(counts)) for i in range(int(counts[p, 0]))]


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0) -> NamedSharding:
    """Sharding of an input whose ``batch_axis`` is split over the data and fsdp axes."""
    spec = [None] * ndim
    spec[batch_axis] = ("data", "fsdp")
    return NamedSharding(mesh, PartitionSpec(*spec))
