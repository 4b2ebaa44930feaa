"""Orbax checkpoints of a training run: save every N steps, keep K, resume exactly, survive damage.

A checkpoint holds the train state (any pytree of arrays: params, optimizer
state, step, RNG key data), the caller's JSON (the input pipeline's iterator
state, so a resumed run sees exactly the batches an uninterrupted run would)
and a checksum of every array, computed on device at save and checked at
restore. Orbax writes each step into a temporary folder and renames it when
complete, so a run killed mid-save leaves no half-written step behind.

A step that fails to restore (unreadable or missing files, bad metadata, or
array bytes that no longer match their checksum) is moved aside into
``<directory>/damaged/`` (never restored from there, kept for inspection),
reported, and the next older step is tried. Restores go onto whatever
shardings the caller's abstract state carries, so a run saved on one mesh
resumes on another.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from geor_jax import lora
from geor_jax.models import qwen2_5_vl as qvl

_STATE, _DATA, _CHECKSUMS = "state", "data", "checksums"
DAMAGED_DIR = "damaged"


class DamagedCheckpointError(ValueError):
    """A checkpoint's arrays do not match the checksums written when it was saved."""


@dataclasses.dataclass(frozen=True)
class SetAside:
    """A damaged step moved out of the way: where it went and why it could not be restored."""

    step: int
    path: str
    reason: str


def _mix(bits: jax.Array) -> jax.Array:
    """A position-dependent uint32 hash of every element of ``bits`` (uint32), summed (wrapping)."""
    index = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(bits.ndim)):  # the flat index, built without a reshape (keeps the sharding)
        index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= bits.shape[axis]
    mixed = (bits ^ (index * jnp.uint32(0x9E3779B9))) * jnp.uint32(0x85EBCA6B)
    return jnp.sum(mixed ^ (mixed >> 16), dtype=jnp.uint32)


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """uint32 checksum of an array's bytes (any dtype of 1, 2, 4 or 8 bytes, or bool)."""
    if x.dtype == jnp.bool_:
        return _mix(x.astype(jnp.uint32))
    width = x.dtype.itemsize
    if width == 8:
        return _mix(jax.lax.bitcast_convert_type(x, jnp.uint32))  # (..., 2)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
    return _mix(jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32))


_checksums_on_device = jax.jit(lambda tree: jax.tree.map(_leaf_checksum, tree))


def state_checksums(state: Any) -> dict[str, int]:
    """``{leaf path: uint32 checksum}`` of every array in ``state``, computed where the arrays live.

    One pass over the state on its own devices (sharded arrays reduce across
    devices; every process gets the same numbers), so nothing is copied to the
    host for it. Flipping, overwriting or moving any element changes the
    checksum of its leaf (up to a 2^-32 chance of a collision).
    """
    values = jax.device_get(_checksums_on_device(state))
    return {jax.tree_util.keystr(path): int(value)
            for path, value in jax.tree_util.tree_flatten_with_path(values)[0]}


def _verify(step: int, restored: Any, expected: dict) -> None:
    """Raise ``DamagedCheckpointError`` naming the first leaf whose checksum differs from the saved one."""
    actual = state_checksums(restored)
    if set(actual) != set(expected):
        raise DamagedCheckpointError(f"step {step}: its checksums name other arrays than the state holds "
                                     f"(saved {len(expected)}, restored {len(actual)})")
    for name, value in actual.items():
        if expected[name] != value:
            raise DamagedCheckpointError(f"step {step}: the array data of {name} does not match the checksum "
                                         "written at save")


def _one_line(error: Exception, limit: int = 300) -> str:
    """``Type: message`` cut to its first line and ``limit`` characters (tensorstore's run to kilobytes)."""
    text = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _all_processes_agree(ok: bool) -> bool:
    """True only if ``ok`` on every process (so all hosts restore, or set aside, the same step)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


class Checkpointer:
    """Periodic, asynchronous, bounded, verified checkpointing into ``directory``.

    save_every: save when ``step % save_every == 0`` (or when forced).
    keep: how many of the newest checkpoints to keep on disk.
    ``set_aside`` lists the damaged steps this instance moved out of the way.
    """

    def __init__(self, directory: str, *, save_every: int, keep: int = 3, async_save: bool = True):
        if save_every < 1 or keep < 1:
            raise ValueError(f"Checkpointer needs save_every >= 1 and keep >= 1, got {save_every} and {keep}")
        self.directory = epath.Path(directory)
        self.save_every = save_every
        self.set_aside: list[SetAside] = []
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=(_STATE, _DATA, _CHECKSUMS))

    @property
    def steps(self) -> list[int]:
        """Steps with a finalised checkpoint on disk, oldest first."""
        return sorted(self._manager.all_steps())

    def is_due(self, step: int, force: bool = False) -> bool:
        """Whether ``save(step, ..., force=force)`` saves."""
        return force or step % self.save_every == 0

    def save(self, step: int, state: Any, data_state: dict | None = None, *, force: bool = False) -> bool:
        """Start saving ``state`` (and the JSON ``data_state``) if ``step`` is due.

        Returns whether a save started. The state's checksums are computed
        first, on device; the write runs in the background and the next save,
        ``wait`` or ``close`` waits for it.
        """
        if not self.is_due(step, force):
            return False
        args = ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(state),
            _DATA: ocp.args.JsonSave(data_state or {}),
            _CHECKSUMS: ocp.args.JsonSave(state_checksums(state)),
        })
        return self._manager.save(step, args=args, force=True)

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """(step, state, data_state) of the newest intact checkpoint, or None if there is none.

        ``abstract_state``: the state's pytree of ``jax.ShapeDtypeStruct`` (with
        shardings) or arrays, which fixes structure, dtypes and placement.
        Every step that fails to restore or to verify is moved aside
        (``set_aside``) with a warning naming it and the reason, and the
        previous one is tried; if none is intact the run starts afresh.
        """
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        for step in reversed(self.steps):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**{
                    _STATE: ocp.args.StandardRestore(target),
                    _DATA: ocp.args.JsonRestore(),
                    _CHECKSUMS: ocp.args.JsonRestore(),
                }))
                _verify(step, restored[_STATE], dict(restored[_CHECKSUMS] or {}))
                error = None
            except Exception as caught:  # orbax/tensorstore raise many types for bad files
                error = caught
            if _all_processes_agree(error is None):
                return step, restored[_STATE], dict(restored[_DATA] or {})
            self._set_aside(step, _one_line(error) if error else "unreadable on another host")
        return None

    def _set_aside(self, step: int, reason: str) -> None:
        """Move step ``step`` into ``damaged/`` (process 0 moves; every process waits for it)."""
        source = self.directory / str(step)
        target = self.directory / DAMAGED_DIR / str(step)
        suffix = 0
        while target.exists():
            suffix += 1
            target = self.directory / DAMAGED_DIR / f"{step}.{suffix}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            source.rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"geor_jax checkpoint set aside {step}")
        self._manager.reload()
        self.set_aside.append(SetAside(step, str(target), reason))
        logging.warning("checkpoint step %d is damaged (%s); moved to %s, trying an older one", step, reason, target)

    def wait(self) -> None:
        """Block until any background save has finished."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def export_hf(graphdef, params, directory: str, dtype=None) -> None:
    """Write trained params as a HF checkpoint directory that transformers loads.

    ``graphdef``/``params``: the model structure and ``TrainState.params``
    (``train_state.create_train_state`` split them). ``dtype`` casts on
    write (e.g. bfloat16 for release); default keeps the params' dtype.
    LoRA adapters, if any, are merged into the weights first.
    """
    model = nnx.merge(graphdef, params)
    qvl.save_hf_checkpoint(lora.merge_adapters(model) if lora.has_adapters(model) else model, directory, dtype=dtype)
