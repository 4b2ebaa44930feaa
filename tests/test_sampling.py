"""The rollout sampler: greedy parity with transformers, shared prefill, sampling
statistics, the log-prob convention, stops, errors and sharding."""

import contextlib
import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
from flax import nnx

from geor_jax import sampling
from geor_jax import sharding as sharding_lib
from geor_jax.models import qwen2_5_vl as qvl
from geor_jax.rollout import Prompts, Rollout
from qwen_vl_fixtures import GRID_A, GRID_B, IMAGE_TOKEN, hf_model, left_pad, nnx_logits, patches, prompt

NEW_TOKENS = 8
GROUP = 2
GRIDS = (GRID_A, GRID_B)
LOGPROB_TOL = 1e-4  # absolute, float32 logits of O(1) from a 2-layer model


@pytest.fixture(scope="module")
def hf():
    return hf_model("qwen2_5_vl")


@pytest.fixture(scope="module")
def checkpoint(hf, tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2_5_vl")
    hf.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return qvl.load_hf_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def batch(model):
    """Two left-padded prompts of different lengths, each with an image of its own size."""
    rng = np.random.RandomState(3)
    ids, mask = left_pad([prompt(rng, 3, GRIDS[:1], 2), prompt(rng, 7, GRIDS[1:], 4)])
    pix = patches(GRIDS, model.config.vision.patch_dim)
    return ids.astype(np.int32), mask.astype(np.int32), pix


def as_prompts(ids, mask, pix, grids=GRIDS) -> Prompts:
    return Prompts(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pix), tuple(grids))


def prefill(model, prompts, **kwargs):
    return sampling.prefill(*nnx.split(model), prompts, **kwargs)


def run(model, batch, config, key=0, group=GROUP, **kwargs):
    return sampling.sample_groups(model, as_prompts(*batch), jax.random.key(key), config, group_size=group, **kwargs)


GREEDY = sampling.SamplingConfig(max_new_tokens=NEW_TOKENS, greedy=True)
SAMPLED = sampling.SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.7, top_k=50, top_p=0.95)


@pytest.fixture(scope="module")
def greedy(model, batch):
    return run(model, batch, GREEDY)


def test_greedy_matches_transformers_generate(hf, batch, greedy):
    ids, mask, pix = batch
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
            pixel_values=torch.tensor(pix), image_grid_thw=torch.tensor(GRIDS),
            mm_token_type_ids=torch.tensor((ids == IMAGE_TOKEN).astype(np.int64)),
            do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0,
            # README's condition for parity: generate suppresses the ids the sampler does, here (the default
            # suppress_placeholders) the image and video placeholders.
            suppress_tokens=[hf.config.image_token_id, hf.config.video_token_id],
        )
    expected = out[:, ids.shape[1]:].numpy()
    tokens = np.asarray(greedy.tokens)
    assert tokens.shape == (2 * GROUP, NEW_TOKENS)
    for g in range(GROUP):
        np.testing.assert_array_equal(tokens[g::GROUP], expected)
    assert np.all(np.asarray(greedy.lengths) == NEW_TOKENS) and np.all(np.asarray(greedy.mask) == 1)


def test_one_image_per_row_slots_sample_the_same_tokens(model, batch, greedy):
    ids, mask, pix = batch
    slots = np.zeros((2, 80, pix.shape[1]), np.float32)
    n_a = GRID_A[0] * GRID_A[1] * GRID_A[2]
    slots[0, :n_a], slots[1, : pix.shape[0] - n_a] = pix[:n_a], pix[n_a:]
    prompts = Prompts(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(slots), (), jnp.asarray(GRIDS, jnp.int32))
    rollout = sampling.sample_groups(model, prompts, jax.random.key(0), GREEDY, group_size=GROUP)
    np.testing.assert_array_equal(np.asarray(rollout.tokens), np.asarray(greedy.tokens))
    np.testing.assert_allclose(np.asarray(rollout.logprobs), np.asarray(greedy.logprobs), atol=LOGPROB_TOL)


def test_placeholders_are_suppressed_unless_the_option_is_off(model, batch):
    """Everything but the two placeholders and one text token suppressed, drawn near-uniformly (temperature
    10): with ``suppress_placeholders`` off the placeholders are drawn, with it on (the default) never."""
    placeholders = (model.config.image_token_id, model.config.video_token_id)
    text_token = 5
    others = tuple(i for i in range(model.config.text.vocab_size) if i not in (*placeholders, text_token))
    on = sampling.SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=10.0, suppress_tokens=others)
    assert on.suppress_placeholders
    np.testing.assert_array_equal(np.asarray(run(model, batch, on).tokens), text_token)
    drawn = np.asarray(run(model, batch, dataclasses.replace(on, suppress_placeholders=False)).tokens)
    assert np.isin(drawn, placeholders).any() and np.isin(drawn, (*placeholders, text_token)).all()


def test_shared_prefill_matches_prefilling_every_copy(model, batch):
    ids, mask, pix = batch
    shared_cache, shared_logits = prefill(model, as_prompts(ids, mask, pix), group_size=GROUP,
                                          max_len=ids.shape[1] + 2)
    # Every copy prefilled on its own: rows in group-major order, images repeated to match.
    rep_ids, rep_mask = np.repeat(ids, GROUP, 0), np.repeat(mask, GROUP, 0)
    n_a = GRID_A[0] * GRID_A[1] * GRID_A[2]
    rep_pix = np.concatenate([pix[:n_a]] * GROUP + [pix[n_a:]] * GROUP)
    rep_grids = (GRID_A,) * GROUP + (GRID_B,) * GROUP
    own_cache, own_logits = prefill(model, as_prompts(rep_ids, rep_mask, rep_pix, rep_grids), group_size=1,
                                    max_len=ids.shape[1] + 2)
    assert np.max(np.abs(np.asarray(shared_logits) - np.asarray(own_logits))) <= 1e-5
    token = jnp.asarray(np.arange(2 * GROUP, dtype=np.int32)[:, None] + 5)
    step = nnx.jit(lambda model, cache: model.logits(model.hidden_states(token, jnp.ones_like(token), cache=cache)[0]))
    step = functools.partial(step, model)
    assert np.max(np.abs(np.asarray(step(shared_cache)) - np.asarray(step(own_cache)))) <= 1e-5


def _expected_probs(logits: np.ndarray, config: sampling.SamplingConfig) -> np.ndarray:
    """Reference temperature -> top-k -> top-p distribution, written out in numpy."""
    z = logits.astype(np.float64)
    z[list(config.suppress_tokens)] = -np.inf
    z = z / config.temperature
    order = np.argsort(-z)
    keep = np.zeros_like(z, bool)
    keep[order[: config.top_k or len(z)]] = True
    p = np.where(keep, np.exp(z - z.max()), 0)
    p /= p.sum()
    mass_before = np.cumsum(p[order]) - p[order]
    keep[order[mass_before >= config.top_p]] = False
    keep |= z >= z[keep].min()  # ties with the least likely kept token are kept
    p = np.where(keep, p, 0)
    return p / p.sum()


@pytest.mark.parametrize("config", [
    sampling.SamplingConfig(temperature=1.0),
    sampling.SamplingConfig(temperature=0.5),
    sampling.SamplingConfig(temperature=2.0, top_k=4),
    sampling.SamplingConfig(temperature=1.3, top_p=0.7),
    sampling.SamplingConfig(temperature=0.8, top_k=5, top_p=0.9),
    sampling.SamplingConfig(temperature=1.0, top_k=3, suppress_tokens=(0,)),
    sampling.SamplingConfig(temperature=3.0, suppress_tokens=(0, 7)),  # zero mass at both ends of the CDF
])
def test_sampling_frequencies_match_the_distribution(config):
    logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], np.float32)
    n = 20000
    tokens, logprobs = sampling.sample_tokens(jnp.tile(jnp.asarray(logits), (n, 1)), jax.random.key(42), config)
    counts = np.bincount(np.asarray(tokens), minlength=len(logits))
    expected = _expected_probs(logits, config)
    assert np.all(counts[expected == 0] == 0)
    support = expected > 0
    result = scipy.stats.chisquare(counts[support], n * expected[support])
    assert result.pvalue > 1e-3, (counts, n * expected)
    # Log-probs are the tempered policy's, before truncation.
    tempered = jax.nn.log_softmax(logits / config.temperature)
    np.testing.assert_allclose(np.asarray(logprobs), np.asarray(tempered)[np.asarray(tokens)], atol=1e-6)


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_keeps_the_same_set_as_sorting(top_p):
    """The bisection cut-off equals the sort-based definition, ties and -inf included."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(64, 50)).astype(np.float32) * 3
    logits[:, 10:14] = logits[:, 9:10]  # a tie group in every row
    logits[::3, 20:25] = -np.inf
    config = sampling.SamplingConfig(top_p=top_p)
    kept = np.isfinite(np.asarray(sampling.filter_logits(jnp.asarray(logits), config)))
    expected = np.stack([_expected_probs(row, config) > 0 for row in logits])
    np.testing.assert_array_equal(kept, expected)


def test_logprobs_equal_a_full_forward(model, batch):
    ids, mask, pix = batch
    out = run(model, batch, SAMPLED)
    rows_ids, rows_mask = np.repeat(ids, GROUP, 0), np.repeat(mask, GROUP, 0)
    full_ids = np.concatenate([rows_ids, np.asarray(out.tokens)], axis=1)
    full_mask = np.concatenate([rows_mask, np.asarray(out.mask)], axis=1)
    n_a = GRID_A[0] * GRID_A[1] * GRID_A[2]
    rep_pix = np.concatenate([pix[:n_a]] * GROUP + [pix[n_a:]] * GROUP)
    logits = nnx_logits(model, full_ids, full_mask, rep_pix, (GRID_A,) * GROUP + (GRID_B,) * GROUP)
    p = ids.shape[1]
    expected = sampling.policy_logprobs(jnp.asarray(logits[:, p - 1:p - 1 + NEW_TOKENS]), out.tokens, SAMPLED.temperature)
    real = np.asarray(out.mask).astype(bool)
    assert real.sum() > 0
    assert np.max(np.abs(np.asarray(out.logprobs)[real] - np.asarray(expected)[real])) <= LOGPROB_TOL
    assert np.all(np.asarray(out.logprobs)[~real] == 0)


def test_same_key_same_samples_different_key_different(model, batch):
    a, b, c = (run(model, batch, SAMPLED, key=k) for k in (1, 1, 2))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.logprobs), np.asarray(b.logprobs))
    assert np.any(np.asarray(a.tokens) != np.asarray(c.tokens))
    tokens = np.asarray(a.tokens)
    assert any(np.any(tokens[g * GROUP] != tokens[g * GROUP + 1]) for g in range(2)), "samples of a group differ"


def test_stop_tokens_end_rows_and_pad(model, batch, greedy):
    tokens = np.asarray(greedy.tokens)
    stop = int(tokens[0, 2])  # row 0 emits it at step 2 (or earlier)
    first = int(np.argmax(tokens[0] == stop))
    config = sampling.SamplingConfig(max_new_tokens=NEW_TOKENS, greedy=True, stop_tokens=(stop, 255), pad_id=7)
    out = run(model, batch, config)
    got, lengths, mask = np.asarray(out.tokens), np.asarray(out.lengths), np.asarray(out.mask)
    for row in range(tokens.shape[0]):
        hits = np.flatnonzero(np.isin(tokens[row], (stop, 255)))
        length = hits[0] + 1 if hits.size else NEW_TOKENS
        assert lengths[row] == length
        np.testing.assert_array_equal(got[row, :length], tokens[row, :length])
        assert np.all(got[row, length:] == 7) and np.all(mask[row] == (np.arange(NEW_TOKENS) < length))
    assert lengths[0] == first + 1 < NEW_TOKENS


def test_all_rows_stopping_ends_early_with_padding(model, batch):
    config = sampling.SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=1.0, stop_tokens=tuple(range(256)))
    out = run(model, batch, config)
    assert np.all(np.asarray(out.lengths) == 1)
    assert np.all(np.asarray(out.tokens)[:, 1:] == 0) and np.all(np.asarray(out.logprobs)[:, 1:] == 0)


@pytest.mark.parametrize("change, message", [
    (dict(group=0), "group_size"),
    (dict(config=sampling.SamplingConfig(max_new_tokens=0)), "max_new_tokens"),
    (dict(config=sampling.SamplingConfig(temperature=0.0)), "temperature"),
    (dict(config=sampling.SamplingConfig(top_p=0.0)), "top_p"),
    (dict(config=sampling.SamplingConfig(top_k=1000)), "top_k"),
    (dict(config=sampling.SamplingConfig(stop_tokens=(300,))), "stop_tokens"),
    (dict(config=sampling.SamplingConfig(max_new_tokens=8, max_cache_len=32)), "max_cache_len"),
    (dict(mask_row0=0), "empty prompt"),
    (dict(mask_last=0), "left-padded"),
    (dict(ids=np.zeros((2, 0), np.int32)), "empty prompt batch"),
    (dict(pix_rows=10), "pixel_values"),
])
def test_bad_input_raises_before_compiling(model, batch, change, message, monkeypatch):
    ids, mask, pix = batch
    ids, mask, pix = ids.copy(), mask.copy(), pix
    if "mask_row0" in change:
        mask[0] = 0
    if "mask_last" in change:
        mask[1, -1] = 0
    if "ids" in change:
        ids = mask = change["ids"]
    if "pix_rows" in change:
        pix = pix[: change["pix_rows"]]
    monkeypatch.setattr(sampling, "prefill", lambda *a, **k: pytest.fail("compiled before validating"))
    with pytest.raises(ValueError, match=message):
        run(model, (ids, mask, pix), change.get("config", GREEDY), group=change.get("group", GROUP))


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "geor_jax" and r.getMessage().startswith("rollout")]


def expected_reports(out: Rollout, stop: tuple[int, ...], every: int) -> list[tuple[int, int]]:
    """(step, finished rows) at every ``every``-th step of the loop, then at its end, read off its output."""
    tokens, last = np.asarray(out.tokens), int(np.asarray(out.lengths).max())
    finished = lambda t: int(sum(np.isin(row[:t], stop).any() for row in tokens))  # noqa: E731
    return [(t, finished(t)) for t in sorted({*range(every, last + 1, every), last})]


@pytest.mark.parametrize("mesh_context", [False, True], ids=["mesh_argument", "set_mesh"])
def test_sharded_greedy_equals_single_device(checkpoint, batch, greedy, mesh_context, caplog, monkeypatch):
    """Also under ``jax.set_mesh``, as the train loop samples: the model's activation constraints apply.
    With progress reports on (every 3 steps), each reaches the host once, not once per device or shard."""
    from geor_jax import progress
    monkeypatch.setattr(progress, "_every_s", lambda: 0.0)  # a line at every report
    caplog.set_level("INFO", logger="geor_jax")
    mesh = sharding_lib.make_mesh(data=1, fsdp=2, tensor=4)
    model = qvl.load_hf_checkpoint(checkpoint, mesh=mesh)
    ids, mask, pix = batch
    rows = jax.device_put(jnp.asarray(ids), sharding_lib.batch_sharding(mesh, 2))
    rows_mask = jax.device_put(jnp.asarray(mask), sharding_lib.batch_sharding(mesh, 2))
    with jax.set_mesh(mesh) if mesh_context else contextlib.nullcontext():
        out = sampling.sample_groups(model, Prompts(rows, rows_mask, jnp.asarray(pix), GRIDS), jax.random.key(0),
                                     dataclasses.replace(GREEDY, progress_every_steps=3), group_size=GROUP + 1,
                                     mesh=mesh)
    assert len(out.tokens.sharding.device_set) == 8
    jax.effects_barrier()  # the callbacks have run
    steps = [int(re.match(r"rollout of 6 rows: (\d+)/8 steps \(.*, 0/6 rows done, ", line)[1])
             for line in progress_lines(caplog)]
    assert steps == [3, 6, 8], progress_lines(caplog)  # 3, 6, then the end: its summary
    single = np.asarray(greedy.tokens)[::GROUP]
    np.testing.assert_array_equal(np.asarray(out.tokens)[:: GROUP + 1], single)
    np.testing.assert_array_equal(np.asarray(out.tokens)[1:: GROUP + 1], single)


def test_decode_loop_reads_weights_in_the_compute_dtype(checkpoint, batch):
    """float32 weights, bfloat16 compute: the text weights are narrowed once, outside the
    decode loop (no number changes), so every step reads bfloat16 weights."""
    ids, mask, pix = batch
    model = qvl.load_hf_checkpoint(checkpoint, dtype=jnp.bfloat16)
    narrowed = qvl.load_hf_checkpoint(checkpoint, dtype=jnp.bfloat16)
    sampling.narrow_text_weights(narrowed)
    assert narrowed.text.layers[0].mlp.up_proj.kernel[...].dtype == jnp.bfloat16
    assert narrowed.text.norm.scale[...].dtype == jnp.bfloat16
    assert narrowed.vision.blocks[0].mlp.up_proj.kernel[...].dtype == jnp.float32  # decode never runs the vision tower
    np.testing.assert_array_equal(nnx_logits(narrowed, ids, mask, pix, GRIDS), nnx_logits(model, ids, mask, pix, GRIDS))

    cache, logits = prefill(model, as_prompts(ids, mask, pix), group_size=GROUP, max_len=ids.shape[1] + NEW_TOKENS)
    graphdef, state = nnx.split(model)
    traced = sampling.decode.trace(graphdef, state, cache, logits, jax.random.key(0), config=SAMPLED, mesh=None)
    (loop,) = [e for e in traced.jaxpr.eqns if e.primitive.name == "while"]
    start = loop.params["cond_nconsts"]
    body_consts = loop.invars[start:start + loop.params["body_nconsts"]]
    weights = [v.aval for v in body_consts if v.aval.ndim >= 2 and jnp.issubdtype(v.aval.dtype, jnp.floating)]
    assert len(weights) >= 7 * model.config.text.num_layers
    assert all(a.dtype == jnp.bfloat16 for a in weights), sorted({str(a) for a in weights})


def test_decode_completions_cuts_at_length():
    class Tok:
        def decode(self, ids, skip_special_tokens=False):
            return ",".join(str(int(i)) for i in ids if not (skip_special_tokens and i == 9))

    rollout = Rollout(prompts=None, tokens=jnp.array([[4, 9, 0], [5, 6, 7]]), mask=jnp.array([[1, 1, 0], [1, 1, 1]]),
                      logprobs=jnp.zeros((2, 3)))
    assert sampling.decode_completions(Tok(), rollout) == ["4", "5,6,7"]
    assert sampling.decode_completions(Tok(), rollout, skip_special_tokens=False) == ["4,9", "5,6,7"]


def test_progress_reports_leave_samples_unchanged(model, batch, greedy, caplog, monkeypatch):
    """Every 3rd decode step reaches the host with its count of finished rows; tokens, mask and log-probs
    are bitwise those without progress (rows stop early). ``test_sharded_greedy_equals_single_device``
    reports over 8 devices."""
    from geor_jax import progress
    monkeypatch.setattr(progress, "_every_s", lambda: 0.0)  # a line at every report
    caplog.set_level("INFO", logger="geor_jax")
    stop = (int(np.asarray(greedy.tokens)[0, 2]),)  # row 0 stops at step 3 at the latest
    config = dataclasses.replace(GREEDY, stop_tokens=stop)
    quiet = run(model, batch, config)
    assert progress_lines(caplog) == []
    out = run(model, batch, dataclasses.replace(config, progress_every_steps=3))
    for name in ("tokens", "mask", "logprobs"):
        np.testing.assert_array_equal(np.asarray(getattr(out, name)), np.asarray(getattr(quiet, name)), name)
    jax.effects_barrier()  # the callbacks have run
    lines = progress_lines(caplog)
    reports = [re.fullmatch(r"rollout of 4 rows: (\d+)/8 steps \(.*, (\d+)/4 rows done, [\d.e+]+ tokens/s", line)
               for line in lines]
    assert all(reports) and " in 0s, " in lines[-1], lines  # the summary at the end
    assert [(int(m[1]), int(m[2])) for m in reports] == expected_reports(out, stop, 3), lines


def test_progress_is_off_by_default_and_silent_for_short_rollouts(model, batch, caplog, monkeypatch):
    """No callback in the decode loop unless asked; ``None`` reads ``--rollout_progress_every_steps``; a
    rollout shorter than ``--progress_every_s`` (30 s) reports but logs nothing, not even its summary."""
    caplog.set_level("INFO", logger="geor_jax")
    cache, logits = prefill(model, as_prompts(*batch), group_size=GROUP, max_len=batch[0].shape[1] + NEW_TOKENS)
    traced = sampling.decode.trace(*nnx.split(model), cache, logits, jax.random.key(0), config=SAMPLED)
    assert "debug_callback" not in str(traced.jaxpr)
    reports, report = [], sampling._ROLLOUT_PROGRESS.report
    monkeypatch.setattr(sampling._ROLLOUT_PROGRESS, "report",
                        lambda *a: (reports.append((int(a[0]), bool(a[3]))), report(*a)))
    monkeypatch.setattr(sampling, "rollout_progress_every_steps", lambda: 4)
    jax.block_until_ready(run(model, batch, dataclasses.replace(SAMPLED, progress_every_steps=None)))
    jax.effects_barrier()
    assert reports == [(4, False), (8, True)]  # the flag's steps, the last one ending the loop
    assert progress_lines(caplog) == []
