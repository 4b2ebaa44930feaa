"""Orbax checkpoints of a training run: save every N steps, keep K, resume exactly.

A checkpoint holds the train state (any pytree of arrays: params, optimizer
state, step, RNG key data) and, as JSON, the input pipeline's iterator state,
so a resumed run sees exactly the batches an uninterrupted run would.
Restores go onto whatever shardings the caller's abstract state carries, so
a run saved on one mesh resumes on another.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import orbax.checkpoint as ocp

_STATE, _DATA = "state", "data"


class Checkpointer:
    """Periodic, asynchronous, bounded checkpointing into ``directory``.

    save_every: save when ``step % save_every == 0`` (or when forced).
    keep: how many of the newest checkpoints to keep on disk.
    """

    def __init__(self, directory: str, *, save_every: int, keep: int = 3, async_save: bool = True):
        if save_every < 1 or keep < 1:
            raise ValueError(f"Checkpointer needs save_every >= 1 and keep >= 1, got {save_every} and {keep}")
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(directory, options=options, item_names=(_STATE, _DATA))

    @property
    def steps(self) -> list[int]:
        """Steps with a finalised checkpoint on disk, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None = None, *, force: bool = False) -> bool:
        """Start saving ``state`` (and the iterator's ``data_state``) if ``step`` is due.

        Returns whether a save started. Saves run in the background; the next
        save, ``wait`` or ``close`` waits for the previous one.
        """
        if step % self.save_every and not force:
            return False
        args = ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(state),
            _DATA: ocp.args.JsonSave(data_state or {}),
        })
        return self._manager.save(step, args=args, force=True)

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """(step, state, data_state) of the newest readable checkpoint, or None.

        ``abstract_state``: the state's pytree of ``jax.ShapeDtypeStruct`` (with
        shardings) or arrays, which fixes structure, dtypes and placement. A
        checkpoint that fails to read (truncated or corrupted files) is skipped
        with a warning and the previous one is tried.
        """
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        for step in reversed(self.steps):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**{
                    _STATE: ocp.args.StandardRestore(target),
                    _DATA: ocp.args.JsonRestore(),
                }))
            except Exception as error:  # orbax/tensorstore raise many types for bad files
                logging.warning("checkpoint at step %d is unreadable (%s: %s); trying an older one",
                                step, type(error).__name__, error)
                continue
            return step, restored[_STATE], dict(restored[_DATA] or {})
        return None

    def wait(self) -> None:
        """Block until any background save has finished."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def export_hf(graphdef, params, directory: str, dtype=None, *, tokenizer=None, patch_config=None) -> None:
    """Write trained params as a HF checkpoint directory that transformers loads.

    ``graphdef``/``params``: the model structure and ``TrainState.params``
    (``train_state.create_train_state`` split them). ``dtype`` casts on
    write (e.g. bfloat16 for release); default keeps the params' dtype.
    With ``tokenizer`` (a ``geor_jax.data.tokenizer.Tokenizer``) and
    ``patch_config`` the directory also carries the processor the model was
    trained with (``export_processor``).
    """
    from flax import nnx

    from geor_jax.models import qwen2_5_vl as qvl

    qvl.save_hf_checkpoint(nnx.merge(graphdef, params), directory, dtype=dtype)
    if tokenizer is not None:
        export_processor(directory, tokenizer, patch_config)


def export_processor(directory: str, tokenizer, patch_config) -> None:
    """Write what serving needs besides weights: the tokenizer with its chat template, the image processor
    settings the model was trained with (``preprocessor_config.json``) and ``generation_config.json``
    (eos = ``<|im_end|>``, ``<|endoftext|>``), so transformers' processor and ``generate`` see what training did.

    ``patch_config``: a ``geor_jax.data.patches.PatchConfig`` (None: Qwen2.5-VL's defaults). Process 0 writes.
    """
    import json
    import os

    import transformers

    from geor_jax.data import patches

    if jax.process_index() != 0:
        return
    tokenizer.hf.save_pretrained(directory)
    with open(os.path.join(directory, patches.PREPROCESSOR_FILE), "w") as f:
        json.dump(patches.preprocessor_dict(patch_config or patches.PatchConfig()), f, indent=2)
    ids = tokenizer.special_ids
    transformers.GenerationConfig(bos_token_id=ids.endoftext, eos_token_id=list(ids.eos),
                                  pad_token_id=ids.pad).save_pretrained(directory)
