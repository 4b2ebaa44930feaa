"""Rollouts: a jitted KV-cache group sampler for GRPO.

``sample_groups`` takes B prompts (left-padded tokens + image patches) and a
group size G and returns G completions per prompt:

1. **Prefill** (``prefill``, one jit): the image and prompt of each of the B prompts run
   through the model once, into a B-row KV cache; the cache and the next-token
   logits are then repeated to B*G rows (``repeat_rows``), so the prompt is
   never recomputed per sample.
2. **Decode** (``decode``, one jit, cache donated): all B*G rows advance together in a
   ``lax.while_loop`` until every row has emitted a stop token or the token
   budget is spent.

Rows are group-major: sample g of prompt b is row ``b*G + g`` (the layout
``geor_jax.grpo`` expects).

Log-prob convention: ``Rollout.logprobs[r, t]`` is
``log_softmax(logits / temperature)[token]``, the policy at the sampling
temperature *before* top-k / top-p truncation (TRL's GRPO convention; with no
top-k / top-p it is exactly the distribution sampled from). A trainer gets
the same numbers from a teacher-forced forward pass over prompt + completion
with ``policy_logprobs`` (see its docstring for the slicing).

Progress: with ``SamplingConfig.progress_every_steps`` k > 0 the decode loop
reports (step, finished rows, tokens sampled) to the host every k steps
(``jax.debug.callback``, run once per report however the rows are sharded),
which logs ``rollout of R rows: 96/256 steps (37.5%), 9.6 steps/s, eta 17s,
40/64 rows done, 410 tokens/s`` every ``--progress_every_s`` seconds, and a
summary at the end if it logged at all (the ETA is an upper bound: the loop
ends when every row has stopped). Samples are the same with it on or off.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx, struct
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from geor_jax import progress
from geor_jax import sharding as sharding_lib
from geor_jax.models.qwen2_5_vl import KVCache, Qwen2VL, repeat_rows, token_logprobs
from geor_jax.models.qwen2_5_vl.cache import KEY_AXES, VALUE_AXES
from geor_jax.models.qwen2_5_vl.rope import static_grids
from geor_jax.rollout import Prompts, Rollout

_PROGRESS_EVERY_STEPS = flags.DEFINE_integer(
    "rollout_progress_every_steps", 32,
    "Decode steps between a rollout's progress reports to the host (0: none) where the sampling config leaves it "
    "to this flag (GRPO training and evaluation); lines appear at most every --progress_every_s seconds.")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Hashable: it is a static argument of the decode jit.

    max_new_tokens: completion budget T (the width of every returned array).
    temperature: logits are divided by it before sampling (> 0).
    top_k: keep the k most likely tokens (0: off); ties with the k-th are kept.
    top_p: keep the smallest set of most likely tokens whose mass reaches p
      (1.0: off); applied after top-k, as transformers does.
    greedy: take the argmax instead of sampling (temperature, top-k, top-p
      then only affect the returned log-probs, through the temperature).
    stop_tokens: a row ends after emitting any of these (the stop token is
      part of the completion and of its mask), e.g. ``SpecialTokenIds.eos``.
    pad_id: written after a row's end.
    suppress_tokens: never sampled (logit -inf before temperature / top-k /
      top-p).
    suppress_placeholders: ``sample_groups`` also suppresses the model's image
      and video placeholder ids (on by default): a completion holding one
      could not be teacher-forced, the forward pass would read it as an image
      slot. Greedy output equals transformers ``generate`` given the same
      suppressed ids.
    max_cache_len: if set, prompt length + max_new_tokens must fit in it
      (e.g. the model's context length).
    progress_every_steps: report the decode loop's progress to the host
      every this many steps (0: never; None: the
      ``--rollout_progress_every_steps`` flag); see the module docstring.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    stop_tokens: tuple[int, ...] = ()
    pad_id: int = 0
    suppress_tokens: tuple[int, ...] = ()
    suppress_placeholders: bool = True
    max_cache_len: int | None = None
    progress_every_steps: int | None = 0

    def validate(self, vocab_size: int) -> None:
        """Raise ``ValueError`` naming the first field the sampler cannot run with."""
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.top_k <= vocab_size:
            raise ValueError(f"top_k must be in [0, vocab_size={vocab_size}], got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.progress_every_steps is not None and self.progress_every_steps < 0:
            raise ValueError(f"progress_every_steps must be >= 0 (0: off), got {self.progress_every_steps}")
        for name, ids in (("stop_tokens", self.stop_tokens), ("pad_id", (self.pad_id,)),
                          ("suppress_tokens", self.suppress_tokens)):
            bad = [int(i) for i in ids if not 0 <= int(i) < vocab_size]
            if bad:
                raise ValueError(f"{name} {bad} outside the vocabulary [0, {vocab_size})")


def policy_logprobs(logits: jax.Array, tokens: jax.Array, temperature: float) -> jax.Array:
    """``log_softmax(logits / temperature)`` at ``tokens``: the rollout log-prob convention.

    logits (..., vocab), tokens (...) -> (...) float32. For a teacher-forced
    forward over ``concat(prompt_tokens, rollout.tokens)`` (mask
    ``concat(prompt_mask, rollout.mask)``), the completion's log-probs are
    ``policy_logprobs(logits[:, P-1:P-1+T], rollout.tokens, T_sampling)``,
    where P is the padded prompt length.
    """
    return token_logprobs(logits.astype(jnp.float32) / temperature, tokens)


def _suppress(logits: jax.Array, config: SamplingConfig) -> jax.Array:
    if not config.suppress_tokens:
        return logits
    return logits.at[:, jnp.asarray(config.suppress_tokens, jnp.int32)].set(-jnp.inf)


def filter_logits(logits: jax.Array, config: SamplingConfig) -> jax.Array:
    """Temperature-scaled logits (rows, vocab); suppressed tokens and tokens outside
    top-k / top-p set to -inf."""
    scaled = _suppress(logits.astype(jnp.float32), config) / config.temperature
    if config.top_k:
        kth = jax.lax.top_k(scaled, config.top_k)[0][:, -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    if config.top_p < 1:
        scaled = _top_p_filter(scaled, config.top_p)
    return scaled


def _ordered_int(x: jax.Array) -> jax.Array:
    """float32 -> int32 preserving order (infinities included), to bisect over floats exactly."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _top_p_filter(scaled: jax.Array, top_p: float) -> jax.Array:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p`` (ties with
    the least likely kept token are kept); the rest become -inf.

    Token i is kept iff the mass of tokens strictly more likely than it is
    below ``top_p``. The cut-off logit is found by bisection over the logits'
    order-preserving int32 codes (32 halvings of the int32 range make it
    exact), each step one masked sum over the vocabulary: no sort, which costs
    more than the whole model step on CPU for a (16, 8192) batch.
    """
    probs = jax.nn.softmax(scaled, axis=-1)
    codes = _ordered_int(scaled)
    mass_above = lambda t: jnp.sum(jnp.where(codes > t, probs, 0.0), axis=-1, keepdims=True)  # noqa: E731

    def halve(_, bounds):  # invariant: mass_above(lo) >= top_p > mass_above(hi)
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)
        below = mass_above(mid) < top_p
        return jnp.where(below, lo, mid), jnp.where(below, mid, hi)

    lo = jnp.full(codes.shape[:-1] + (1,), jnp.iinfo(jnp.int32).min, jnp.int32)
    lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, jnp.max(codes, axis=-1, keepdims=True)))
    return jnp.where(codes > lo, scaled, -jnp.inf)


def first_argmax(x: jax.Array) -> jax.Array:
    """Index of the first maximum along the last axis, int32 (``jnp.argmax`` for non-NaN rows).

    Two plain reductions (max, then the smallest index holding it): XLA CPU
    vectorises these, where ``jnp.argmax``'s paired value/index reduction runs
    about 2.5x slower on (16, 8192) logits. A row with a NaN gets the last index.
    """
    vocab = x.shape[-1]
    best = jnp.max(x, axis=-1, keepdims=True)
    index = jnp.min(jnp.where(x == best, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)
    return jnp.minimum(index, vocab - 1)


def _inverse_cdf_sample(key: jax.Array, scaled: jax.Array) -> jax.Array:
    """One draw per row from softmax(scaled) (rows, vocab), -inf entries never drawn.

    Inverse-CDF sampling needs one uniform number per row, where Gumbel-max
    needs one per vocabulary entry (on XLA CPU generating those dominated the
    sampling cost). The draw is the first token whose cumulative mass reaches
    u in (0, total]; requiring a positive probability as well keeps
    zero-probability tokens out even where float rounding of the cumulative
    sum is not monotone.
    """
    probs = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True))
    cdf = jnp.cumsum(probs, axis=-1)
    positive = probs > 0
    total = jnp.max(jnp.where(positive, cdf, 0.0), axis=-1, keepdims=True)
    u = (1.0 - jax.random.uniform(key, total.shape, jnp.float32)) * total
    vocab = scaled.shape[-1]
    return jnp.min(jnp.where((cdf >= u) & positive, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)


def sample_tokens(logits: jax.Array, key: jax.Array, config: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """One token per row from logits (rows, vocab): (tokens int32, log-probs float32).

    Draws from the temperature / top-k / top-p distribution by inverse-CDF
    sampling (argmax when ``config.greedy``), never a suppressed token; the
    log-probs follow the module's convention (full vocabulary, tempered, no
    truncation).
    """
    if config.greedy:
        tokens = first_argmax(_suppress(logits.astype(jnp.float32), config))
    else:
        tokens = _inverse_cdf_sample(key, filter_logits(logits, config))
    return tokens, policy_logprobs(logits, tokens, config.temperature)


def _constrain_rows(tree, mesh: Mesh | None):
    """Shard the row axis of caches and per-row arrays over data+fsdp (a cache's kv heads over tensor)."""
    if mesh is None:
        return tree

    def constrain(x, axes=None):
        axes = axes or (("batch",) + (None,) * (x.ndim - 1) if x.ndim else ())
        spec = sharding_lib.logical_to_spec(axes, x.shape, mesh)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    def constrain_cache(cache: KVCache) -> KVCache:
        layer = ("layers",) if cache.stacked else ()
        return cache.replace(keys=jax.tree.map(lambda x: constrain(x, layer + KEY_AXES), cache.keys),
                             values=jax.tree.map(lambda x: constrain(x, layer + VALUE_AXES), cache.values),
                             valid=constrain(cache.valid), next_position=constrain(cache.next_position))

    is_cache = lambda x: isinstance(x, KVCache)  # noqa: E731
    return jax.tree.map(lambda x: constrain_cache(x) if is_cache(x) else constrain(x), tree, is_leaf=is_cache)


def _lm_head_input(hidden):
    """One token per row: the hidden states split over their width, like the LM head's FSDP-sharded input axis.

    Each device then multiplies its slice of the width into partial logits
    that are summed across devices, a (rows, vocab) all-reduce, instead of
    gathering the whole (hidden, vocab) LM head for a few rows (what the
    decoder's row-sharded hidden states would otherwise make XLA do).
    """
    return sharding_lib.constrain(hidden, (None, None, "embed"))


@functools.partial(jax.jit, static_argnames=("graphdef", "group_size", "max_len", "mesh"))
def prefill(graphdef: nnx.GraphDef, state: nnx.State, prompts: Prompts, *, group_size: int, max_len: int,
            mesh: Mesh | None = None) -> tuple[KVCache, jax.Array]:
    """Phase 1 of ``sample_groups`` (one jit): each prompt once, shared with its group.

    Takes the model split (``nnx.split``) so tools can lower or time this
    phase alone. Returns a cache of B*G rows and ``max_len`` slots holding the
    prompts (row b*G+g = prompt b) and the next-token logits (B*G, vocab)
    float32. Inputs are not validated here: ``sample_groups`` does that.
    """
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(prompts.tokens.shape[0], max_len)
    hidden, cache = model.hidden_states(prompts.tokens, prompts.mask, pixel_values=prompts.pixel_values,
                                        image_grid_thw=prompts.image_grid_thw, cache=cache)
    logits = model.logits(_lm_head_input(hidden[:, -1:]))[:, 0]
    return _constrain_rows((repeat_rows(cache, group_size), jnp.repeat(logits, group_size, axis=0)), mesh)


@struct.dataclass
class _DecodeState:
    """Loop carry: ``step`` tokens have been sampled for every live row."""

    step: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    done: jax.Array
    cache: KVCache


def narrow_text_weights(model: Qwen2VL) -> None:
    """Cast the text decoder's and LM head's weights that are wider than the compute dtype to it, in place.

    Every use casts them to the compute dtype anyway (``Dense`` contracts in
    the narrower of weight and compute dtype; norms and the embedding cast to
    the compute dtype), so the model computes exactly the same numbers. Done
    once before the decode loop, each step then reads the narrow copy instead
    of re-reading and re-casting float32 master weights (XLA keeps those casts
    inside the loop) -- with float32 weights and bfloat16 compute, half the
    weight bytes per step, which is what decoding is bound by.
    """
    dtype = model.text.dtype
    modules = [model.text] + ([model.lm_head] if model.lm_head is not None else [])
    for module in modules:
        for _, var in nnx.iter_graph(module):
            if (isinstance(var, nnx.Param) and jnp.issubdtype(var.dtype, jnp.floating)
                    and jnp.finfo(var.dtype).bits > jnp.finfo(dtype).bits):
                var.set_value(var[...].astype(dtype))


class _RolloutProgress:
    """Host side of the decode loop's reports: one ``progress.Progress`` over the steps of the rollout running.

    One rollout at a time (the loop of ``decode``). Reports carry absolute
    counts, so one that arrives late (debug callbacks are unordered) is
    dropped instead of counted twice. A loop that ends before its first
    report (every row stopped at once) logs nothing.
    """

    def __init__(self):
        self.shown, self.rows = None, 0

    def begin(self, rows: int, budget: int) -> None:
        self.shown = progress.Progress(f"rollout of {rows} rows", budget, unit="steps", bar=False)
        self.rows = rows

    def report(self, step, finished, tokens, last) -> None:
        """Step ``step`` of the loop, ``finished`` rows stopped, ``tokens`` sampled; ``last``: the loop ends."""
        shown = self.shown
        if shown is None or int(step) < shown.done:
            return
        elapsed = max(shown.clock() - shown.start, 1e-9)
        shown.detail = f"{int(finished)}/{self.rows} rows done, {int(tokens) / elapsed:.3g} tokens/s"
        if not last:
            shown.update(int(step) - shown.done)
            return
        shown.done, self.shown = int(step), None
        if shown.lines:  # the summary; a rollout too short to log a line stays silent
            shown.close()


_ROLLOUT_PROGRESS = _RolloutProgress()


def _report_progress(s: _DecodeState, last: jax.Array) -> None:
    """Send ``s``'s step, finished rows and tokens sampled, and whether the loop ends (``last``), to
    ``_ROLLOUT_PROGRESS``.

    The callback is traced with the default (unpartitioned) sharding: under
    SPMD it runs once, on the computation's first device, whatever the rows'
    sharding; its operands are four scalars.
    """
    args = s.step, jnp.sum(s.done, dtype=jnp.int32), jnp.sum(s.lengths), last
    jax.debug.callback(lambda *a: _ROLLOUT_PROGRESS.report(*a), *args)


@functools.partial(jax.jit, static_argnames=("graphdef", "config", "mesh"), donate_argnames=("cache",))
def decode(graphdef: nnx.GraphDef, state: nnx.State, cache: KVCache, logits: jax.Array, key: jax.Array, *,
           config: SamplingConfig, mesh: Mesh | None = None):
    """Phase 2 of ``sample_groups`` (one jit, ``cache`` donated): every row decodes until done.

    From ``prefill``'s cache and logits; returns ((tokens, mask, logprobs),
    the cache). ``config`` must already hold every suppressed id and an
    integer ``progress_every_steps`` (``sample_groups`` resolves both).
    """
    model = nnx.merge(graphdef, state)
    narrow_text_weights(model)
    rows, budget, every = logits.shape[0], config.max_new_tokens, config.progress_every_steps
    stop = jnp.asarray(config.stop_tokens or (-1,), jnp.int32)

    def emit(s: _DecodeState, logits) -> _DecodeState:
        """Sample column ``s.step`` from ``logits``; finished rows get padding."""
        token, logprob = sample_tokens(logits, jax.random.fold_in(key, s.step), config)
        live = ~s.done
        token = jnp.where(live, token, config.pad_id)
        column = lambda a, v: jax.lax.dynamic_update_slice(a, v[:, None], (0, s.step))
        return s.replace(
            step=s.step + 1,
            tokens=column(s.tokens, token),
            logprobs=column(s.logprobs, jnp.where(live, logprob, 0.0)),
            lengths=s.lengths + live,
            done=s.done | jnp.isin(token, stop),
        )

    def not_finished(s: _DecodeState):
        return ~jnp.all(s.done) & (s.step < budget)

    def decode_step(s: _DecodeState) -> _DecodeState:
        last = jax.lax.dynamic_slice_in_dim(s.tokens, s.step - 1, 1, axis=1)
        positions = jnp.broadcast_to(s.cache.next_position[None, :, None], (3, rows, 1))
        hidden, cache = model.hidden_states(last, (~s.done)[:, None].astype(jnp.int32), positions=positions, cache=s.cache)
        return emit(s.replace(cache=cache), model.logits(_lm_head_input(hidden))[:, 0])

    def steps_then_report(s: _DecodeState) -> _DecodeState:
        """Decode up to the next multiple of ``every`` steps, then report. A loop in the loop rather than a
        ``lax.cond`` on the step: the per-step body stays the one the loop without progress runs."""
        until = (s.step // every + 1) * every
        s = jax.lax.while_loop(lambda s: not_finished(s) & (s.step < until), decode_step, s)
        _report_progress(s, last=~not_finished(s))
        return s

    start = _DecodeState(
        step=jnp.zeros((), jnp.int32),
        tokens=jnp.full((rows, budget), config.pad_id, jnp.int32),
        logprobs=jnp.zeros((rows, budget), jnp.float32),
        lengths=jnp.zeros((rows,), jnp.int32),
        done=jnp.zeros((rows,), bool),
        cache=cache,
    )
    start = _constrain_rows(emit(start, logits), mesh)
    if every:
        jax.debug.callback(lambda: _ROLLOUT_PROGRESS.begin(rows, budget))
        end = jax.lax.while_loop(not_finished, steps_then_report, start)  # the last report closes the log
    else:
        end = jax.lax.while_loop(not_finished, decode_step, start)
    mask = (jnp.arange(budget)[None, :] < end.lengths[:, None]).astype(jnp.int32)
    # Returning the cache lets XLA run the loop in the donated buffers instead of a copy.
    return (end.tokens, mask, end.logprobs), end.cache


def _host_value(x) -> np.ndarray:
    """A small reduced value on the host (gathered when it spans other hosts' devices)."""
    return sharding_lib.to_host(x)


def rollout_progress_every_steps() -> int:
    """The ``--rollout_progress_every_steps`` flag (its default before flags are parsed)."""
    return _PROGRESS_EVERY_STEPS.value if flags.FLAGS.is_parsed() else _PROGRESS_EVERY_STEPS.default


def validate_inputs(model: Qwen2VL, prompts: Prompts, group_size, config: SamplingConfig) -> None:
    """Raise ``ValueError`` with a clear message for inputs the sampler cannot run, before compiling."""
    if not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    config.validate(model.config.text.vocab_size)
    tokens, mask = prompts.tokens, prompts.mask
    if len(tokens.shape) != 2 or tuple(tokens.shape) != tuple(mask.shape):
        raise ValueError(f"prompt tokens {tokens.shape} and mask {mask.shape} must be equal (B, P) shapes")
    batch, length = tokens.shape
    if batch < 1 or length < 1:
        raise ValueError(f"empty prompt batch: prompt tokens have shape {tokens.shape}")
    if config.max_cache_len is not None and length + config.max_new_tokens > config.max_cache_len:
        raise ValueError(f"prompt length {length} + max_new_tokens {config.max_new_tokens} exceeds "
                         f"max_cache_len {config.max_cache_len}")
    if prompts.row_grids is not None and not prompts.matches_grids():
        raise ValueError(f"one image per row: pixel_values {getattr(prompts.pixel_values, 'shape', None)} and "
                         f"row_grids {prompts.row_grids.shape} need {batch} rows (B, L, patch_dim) and (B, 3), "
                         f"and no static grids (got {prompts.grids})")
    if not prompts.matches_grids():
        got = None if prompts.pixel_values is None else prompts.pixel_values.shape
        patches = sum(t * h * w for t, h, w in prompts.grids)
        raise ValueError(f"image grids {tuple(prompts.grids)} need pixel_values of {patches} rows, got {got}")
    real_per_row = _host_value(jnp.sum(jnp.asarray(mask) > 0, axis=1))
    if np.any(real_per_row == 0):
        raise ValueError(f"empty prompt: rows {np.flatnonzero(real_per_row == 0).tolist()} have no real tokens")
    if not bool(_host_value(jnp.all(jnp.asarray(mask)[:, -1] > 0))):
        raise ValueError("prompts must be left-padded: the last column of the prompt mask must be 1 in every row")


def sample_groups(
    model: Qwen2VL,
    prompts: Prompts,
    key: jax.Array,
    config: SamplingConfig,
    *,
    group_size: int,
    mesh: Mesh | None = None,
) -> Rollout:
    """Sample ``group_size`` completions for each of B prompts.

    Args:
      model: a ``Qwen2VL`` (sharded or not).
      prompts: ``Prompts`` (a pipeline batch's ``Batch.prompts()``): LEFT-padded
        (B, P) tokens and mask, the images' patches and static grids.
      key: a PRNG key; the same key gives the same samples (on any mesh).
      config: a ``SamplingConfig``.
      group_size: G >= 1 samples per prompt.
      mesh: if given, rows (B*G) are sharded over data+fsdp and KV heads over
        tensor; the model's parameters keep their own sharding.

    Returns a ``Rollout`` of B*G group-major rows (row b*G+g is sample g of
    prompt b) holding ``prompts``. Compiles once per (model graph, B, P, G,
    image grids (or, for one image per row, the patch slot length), config,
    mesh); the sampling key, the weights and per-row grids are ordinary
    arguments.
    """
    prompts = prompts.replace(grids=static_grids(prompts.grids))
    validate_inputs(model, prompts, group_size, config)
    if config.suppress_placeholders:
        placeholders = {model.config.image_token_id, model.config.video_token_id}
        config = dataclasses.replace(config, suppress_tokens=tuple(sorted(set(config.suppress_tokens) | placeholders)))
    if config.progress_every_steps is None:
        config = dataclasses.replace(config, progress_every_steps=rollout_progress_every_steps())
    max_len = prompts.tokens.shape[1] + config.max_new_tokens
    graphdef, state = nnx.split(model)  # once for both jits
    cache, logits = prefill(graphdef, state, prompts, group_size=group_size, max_len=max_len, mesh=mesh)
    (tokens, mask, logprobs), _ = decode(graphdef, state, cache, logits, key, config=config, mesh=mesh)
    return Rollout(prompts=prompts, tokens=tokens, mask=mask, logprobs=logprobs)


def decode_completions(tokenizer, rollout: Rollout, skip_special_tokens: bool = True) -> list[str]:
    """Text of every completion (B*G strings, group-major), each cut at its length.

    ``tokenizer`` is a ``geor_jax.data.tokenizer.Tokenizer`` (anything with
    ``decode(ids, skip_special_tokens=...)``). On multi-host meshes the rows
    of every host are gathered first.
    """
    tokens, lengths = rollout.tokens, rollout.lengths
    if not tokens.is_fully_addressable:
        tokens, lengths = multihost_utils.process_allgather((tokens, lengths), tiled=True)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    return [tokenizer.decode(row[:n], skip_special_tokens=skip_special_tokens) for row, n in zip(tokens, lengths)]
