"""Train state, optimizer and the update shared by SFT and GRPO.

The model's structure (``nnx.GraphDef``) stays outside the state; the state
is a plain pytree (params, optimizer state, step, RNG key data, count of
skipped updates) that jits, shards and checkpoints as is. Params keep their
``param_dtype`` (fp32 master weights); the compute dtype is the model's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from geor_jax import config_fields, sharding


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup, cosine decay and global-norm clipping.

    The defaults are the Geo-R GRPO script's (TRL-style): lr 1e-6, no weight
    decay, clip 1.0. The paper's SFT uses lr 1e-5. ``total_steps`` (the end
    of the cosine) is the run's step count, set by the run, not a config file.
    """

    learning_rate: float = config_fields.field(1e-6, config_fields.greater_than(0))
    warmup_steps: int = config_fields.field(0, config_fields.at_least(0))
    total_steps: int = config_fields.field(1000, config_fields.at_least(1))
    final_learning_rate_fraction: float = config_fields.field(0.0, config_fields.between(0, 1))
    weight_decay: float = config_fields.field(0.0, config_fields.at_least(0))
    b1: float = config_fields.field(0.9, config_fields.between(0, 1))
    b2: float = config_fields.field(0.999, config_fields.between(0, 1))
    eps: float = config_fields.field(1e-8, config_fields.greater_than(0))
    max_grad_norm: float | None = config_fields.field(1.0, config_fields.greater_than(0))  # None: no clipping

    def __post_init__(self):
        config_fields.check(self)

    def schedule(self) -> optax.Schedule:
        """Learning rate per update: 0 -> peak over warmup, cosine to the final fraction."""
        if self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"OptimizerConfig.total_steps ({self.total_steps}) must exceed warmup_steps ({self.warmup_steps})"
            )
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if self.warmup_steps else self.learning_rate,
            peak_value=self.learning_rate,
            warmup_steps=self.warmup_steps,
            decay_steps=self.total_steps,
            end_value=self.learning_rate * self.final_learning_rate_fraction,
        )

    def make(self) -> optax.GradientTransformation:
        """The optax transformation."""
        adamw = optax.adamw(self.schedule(), b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.weight_decay)
        if self.max_grad_norm is None:
            return adamw
        return optax.chain(optax.clip_by_global_norm(self.max_grad_norm), adamw)


@struct.dataclass
class TrainState:
    """Everything a training run updates: a pytree of arrays."""

    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array  # raw key data (uint32), portable through checkpoints
    skipped_updates: jax.Array


def create_train_state(
    model: nnx.Module, optimizer: optax.GradientTransformation, rng: jax.Array, mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> tuple[nnx.GraphDef, TrainState]:
    """Split ``model`` into its structure and a fresh train state.

    With a mesh, params are placed by the partition rules, the optimizer's
    moments get the same shardings and everything else is replicated;
    without one, everything is committed to the first device. Either way a
    step and a checkpoint restore return the state exactly as placed, so the
    step compiles once. ``rng`` is a typed or raw key.
    """
    graphdef, params = nnx.split(model, nnx.Param)
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    if mesh is None:
        # Committed: uncommitted arrays are another jit cache key than the
        # committed ones a checkpoint restores.
        rest = SingleDeviceSharding(jax.devices()[0])
        param_shardings = jax.tree.map(lambda _: rest, params)
    else:
        rest = NamedSharding(mesh, PartitionSpec())
        param_shardings = sharding.state_shardings(params, mesh, rules)
    params = jax.device_put(params, param_shardings)
    # The optimizer's moments mirror the params' shardings; its counters, like
    # every other leaf, get ``rest``. (Left to XLA, init's zeros do not depend
    # on the params and land on one device.)
    opt_shardings = optax.tree_map_params(
        optimizer, lambda _, param_sharding: param_sharding, jax.eval_shape(optimizer.init, params), param_shardings,
        transform_non_params=lambda _: rest,
    )
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)

    def counter():  # one buffer each: the step donates them
        return jax.device_put(jnp.zeros((), jnp.int32), rest)

    state = TrainState(params=params, opt_state=opt_state, step=counter(), rng=jax.device_put(rng, rest),
                       skipped_updates=counter())
    return graphdef, state


def apply_gradients(state: TrainState, grads: Any, loss: jax.Array, optimizer: optax.GradientTransformation):
    """One optimizer update, skipped if the loss or any gradient is not finite.

    A skipped update leaves params and optimizer state exactly as they were
    and counts in ``skipped_updates``; ``step`` advances either way.
    Returns (state, metrics with grad_norm and skipped).
    """
    finite = jnp.isfinite(loss) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = state.replace(
        params=keep_if_finite(params, state.params),
        opt_state=keep_if_finite(opt_state, state.opt_state),
        step=state.step + 1,
        skipped_updates=state.skipped_updates + (~finite).astype(jnp.int32),
    )
    return new_state, {"grad_norm": optax.tree.norm(grads), "skipped": (~finite).astype(jnp.float32)}


def accumulate_gradients(
    loss_fn: Callable[[Any, Any], tuple[jax.Array, dict]], params: Any, micro_batches: Any,
    metric_weights: jax.Array | None = None,
) -> tuple[jax.Array, Any, dict]:
    """Sum of losses and gradients over micro-batches stacked on a leading axis.

    ``loss_fn(params, micro_batch) -> (loss, metrics)`` must already weight
    its micro-batch by the whole batch's normaliser, so the sums equal one
    big batch's loss and gradient. Runs as a ``lax.scan``: memory holds one
    micro-batch's activations. Metrics are averaged over micro-batches with
    ``metric_weights`` (num_micro_batches,), summing to 1; by default equally.
    Per-token means need each micro-batch's share of the tokens
    (``token_shares``) to equal the whole batch's.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def body(carry, micro_batch):
        loss_sum, grad_sum = carry
        (loss, metrics), grads = grad_fn(params, micro_batch)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss, grads), metrics = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), micro_batches)
    if metric_weights is None:
        return loss, grads, jax.tree.map(jnp.mean, metrics)
    return loss, grads, jax.tree.map(lambda m: jnp.sum(m * metric_weights.astype(m.dtype)), metrics)


def token_shares(mask: jax.Array, num_micro_batches: int) -> jax.Array:
    """Each micro-batch's share of the mask's tokens, (num_micro_batches,): weights for per-token metrics."""
    per_micro = jnp.sum(mask.reshape(num_micro_batches, -1).astype(jnp.float32), axis=1)
    return per_micro / jnp.maximum(jnp.sum(per_micro), 1.0)


def split_micro_batches(tree: Any, num_micro_batches: int) -> Any:
    """Reshape every leaf's leading axis (n, ...) into (num_micro_batches, n / num_micro_batches, ...)."""
    def split(x):
        if x.shape[0] % num_micro_batches:
            raise ValueError(f"leading axis {x.shape[0]} does not split into {num_micro_batches} micro-batches")
        return x.reshape(num_micro_batches, x.shape[0] // num_micro_batches, *x.shape[1:])

    return jax.tree.map(split, tree)
