"""LoRA adapters and frozen towers: which parameters train, adapters on and merged away.

Two ways to train less than the whole model, for SFT and GRPO alike:

- **LoRA** (``LoRAConfig.rank`` > 0): ``add_adapters`` puts a low-rank update
  (``models/qwen2_5_vl/adapters.py``) on every Dense that ``targets`` names;
  only the adapters train and every base weight is frozen, as in PEFT. GRPO's
  KL reference is then the base model with its adapters disabled
  (``without_adapters``): no second copy of the weights.
- **Frozen towers** (``freeze``, full fine-tuning otherwise): the vision
  tower, the merger and / or the token embeddings keep their weights.

``trainable_filter`` turns either into the NNX filter that
``train_state.create_train_state`` splits the parameters by; the optimizer
state exists only for what it selects, and the steps differentiate only
that. ``merge_adapters`` folds the adapters into the weights for a plain HF
export; ``models/qwen2_5_vl/peft_io.py`` writes and reads them in PEFT's
format.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from geor_jax import config_fields, sharding
from geor_jax.models.qwen2_5_vl import adapters, layers

# Target names and the Dense modules they cover. Text decoder: its attention and MLP projections by name.
TEXT_TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
                "down": "down_proj"}
TARGETS = (*TEXT_TARGETS, "vision", "merger")  # vision: every projection of the vision blocks; merger: its two
# Frozen groups and the parameter path prefixes they cover. The vision tower excludes its merger; "embeddings"
# is the token embedding table (with tied embeddings, the LM head too: it is the same array).
FREEZE_GROUPS = {
    "vision": (("vision", "patch_embed"), ("vision", "blocks")),
    "merger": (("vision", "merger"),),
    "embeddings": (("text", "embed_tokens"),),
}


def _targets_check(targets) -> str | None:
    if not targets:
        return "must name at least one module"
    return config_fields.each(config_fields.one_of(*TARGETS))(targets)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """LoRA settings, PEFT's meaning: ``y = x W + (alpha / rank) * dropout(x) A B``; rank 0 is off.

    targets: the modules adapted, by name (``TARGETS``): q/k/v/o and
      gate/up/down are the text decoder's projections, "vision" every
      projection of the vision blocks, "merger" the patch merger's two.
    init_from: a PEFT adapter directory (adapter_config.json +
      adapter_model.safetensors, e.g. a run's ``adapter/`` export) to continue
      training from; its rank, alpha and modules must equal these.
    """

    rank: int = config_fields.field(0, config_fields.at_least(0))
    alpha: float = config_fields.field(16.0, config_fields.greater_than(0))
    dropout: float = config_fields.field(0.0, lambda v: None if 0 <= v < 1 else f"must be in [0, 1), got {v!r}")
    targets: tuple[str, ...] = config_fields.field(tuple(TEXT_TARGETS), _targets_check)
    init_from: str = ""

    def __post_init__(self):
        config_fields.check(self)
        if self.init_from and not self.rank:
            raise config_fields.ConfigError("LoRAConfig.rank", "must be > 0 to continue from init_from's adapter")

    @property
    def scale(self) -> float:
        """The update's factor, alpha / rank."""
        return self.alpha / self.rank


def target_of(path: tuple) -> str | None:
    """The target name that covers the Dense module at ``path``, or None (patch embedding, LM head)."""
    if path[0] == "text":
        return {name: target for target, name in TEXT_TARGETS.items()}.get(path[-1])
    if path[:2] == ("vision", "blocks"):
        return "vision"
    if path[:2] == ("vision", "merger"):
        return "merger"
    return None


def dense_modules(model: nnx.Module) -> list[tuple[tuple, layers.Dense]]:
    """(path, module) of every Dense in ``model``, in graph order."""
    return [(path, node) for path, node in nnx.iter_graph(model) if isinstance(node, layers.Dense)]


def adapted_modules(model: nnx.Module) -> list[tuple[tuple, layers.Dense]]:
    """(path, module) of every Dense that carries an adapter."""
    return [(path, dense) for path, dense in dense_modules(model) if dense.lora is not None]


def has_adapters(model: nnx.Module) -> bool:
    return bool(adapted_modules(model))


def _is_stacked(dense: layers.Dense) -> bool:
    return dense.kernel.get_metadata(sharding.LOGICAL_AXES)[0] == "layers"


def _adapter_layout(dense: layers.Dense, rank: int) -> tuple[tuple, tuple, tuple, tuple, int]:
    """(A shape, A logical axes, B shape, B logical axes, fan_in): the kernel's own axes on either side of the rank."""
    shape, axes = dense.kernel.shape, dense.kernel.get_metadata(sharding.LOGICAL_AXES)
    lead = 1 if _is_stacked(dense) else 0
    split = lead + dense.n_in
    a_shape, a_axes = shape[:split] + (rank,), axes[:split] + (adapters.RANK_AXIS,)
    b_shape, b_axes = shape[:lead] + (rank,) + shape[split:], axes[:lead] + (adapters.RANK_AXIS,) + axes[split:]
    return a_shape, a_axes, b_shape, b_axes, math.prod(shape[lead:split])


def _module_id(path: tuple) -> int:
    """A stable 31-bit id of a module path: its adapter's init and dropout streams."""
    return zlib.crc32("/".join(map(str, path)).encode()) & 0x7FFFFFFF


def add_adapters(model: nnx.Module, config: LoRAConfig, key: jax.Array, mesh: Mesh | None = None,
                 rules: sharding.Rules = sharding.DEFAULT_RULES) -> nnx.Module:
    """Give every Dense that ``config.targets`` covers a fresh adapter, in place; returns ``model``.

    A is drawn uniformly in +-1/sqrt(fan_in) (PEFT's default, Kaiming-uniform
    with a = sqrt(5)) from ``key`` folded with the module's path, B is zero,
    both float32 (the trained weights' master copy, whatever the base's
    dtype). With ``mesh`` each is created directly in the sharding its
    logical axes give it; all of them in one compiled program.
    """
    if not config.rank:
        raise ValueError("LoRAConfig.rank is 0: there are no adapters to add")
    chosen = [(path, dense) for path, dense in dense_modules(model) if target_of(path) in config.targets]
    for path, dense in chosen:
        if dense.lora is not None:
            raise ValueError(f"{'/'.join(map(str, path))} already has an adapter")
    plans = [(_module_id(path), _adapter_layout(dense, config.rank)) for path, dense in chosen]

    def init(key):
        out = []
        for module_id, (a_shape, _, b_shape, _, fan_in) in plans:
            bound = 1.0 / math.sqrt(fan_in)
            a = jax.random.uniform(jax.random.fold_in(key, module_id), a_shape, jnp.float32, -bound, bound)
            out.append((a, jnp.zeros(b_shape, jnp.float32)))
        return out

    out_shardings = None
    if mesh is not None:
        place = lambda axes, shape: NamedSharding(mesh, sharding.logical_to_spec(axes, shape, mesh, rules))  # noqa: E731
        out_shardings = [(place(a_axes, a_shape), place(b_axes, b_shape))
                         for _, (a_shape, a_axes, b_shape, b_axes, _) in plans]
    arrays = jax.jit(init, out_shardings=out_shardings)(key)
    for (path, dense), (module_id, layout), (a, b) in zip(chosen, plans, arrays):
        dense.lora = adapters.LoRA(a, b, layout[1], layout[3], scale=config.scale, dropout=config.dropout,
                                   dropout_id=module_id, dtype=dense.dtype)
    return model


def without_adapters(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` (sharing its arrays) with every adapter removed: the base model, adapters disabled."""
    model = nnx.clone(model)
    for _, dense in adapted_modules(model):
        dense.lora = None
    return model


def merge_adapters(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` whose kernels hold ``W + scale * A @ B`` (in float32, cast back) and no adapters.

    Its forward equals the adapted model's up to rounding; it saves as a
    plain HF checkpoint (``save_hf_checkpoint``).
    """
    model = nnx.clone(model)
    for _, dense in adapted_modules(model):
        kernel = dense.kernel[...]
        dense.kernel.set_value((kernel.astype(jnp.float32) + dense.lora.delta()).astype(kernel.dtype))
        dense.lora = None
    return model


@dataclasses.dataclass(frozen=True)
class _Under:
    """NNX filter: the parameters whose path starts with one of ``prefixes`` (hashable, so a static field)."""

    prefixes: tuple[tuple[str, ...], ...]

    def __call__(self, path, value) -> bool:
        return any(tuple(path[:len(prefix)]) == prefix for prefix in self.prefixes)


def trainable_filter(config: LoRAConfig, freeze: Sequence[str] = ()):
    """The NNX filter of the trained parameters.

    With LoRA: the adapters alone (every base weight frozen). Otherwise every
    parameter outside the ``freeze`` groups (``FREEZE_GROUPS``).
    """
    unknown = [group for group in freeze if group not in FREEZE_GROUPS]
    if unknown:
        raise ValueError(f"freeze groups {unknown}: choose from {sorted(FREEZE_GROUPS)}")
    if config.rank:
        return nnx.LoRAParam
    if not freeze:
        return nnx.Param
    return nnx.All(nnx.Param, nnx.Not(_Under(tuple(p for group in freeze for p in FREEZE_GROUPS[group]))))
