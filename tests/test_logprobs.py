"""geor_jax.logprobs: continuation log-probs, full vs shared-prompt forward, chunked vs whole LM head."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tiny_policy
from geor_jax import logprobs
from geor_jax.models import qwen2_5_vl as qvl
from geor_jax.rollout import Prompts

G = 3


@nnx.jit(static_argnames="grid")
def row_logits(model, ids, attn, pixels, grid):
    return model(ids, attn, pixel_values=pixels, image_grid_thw=(grid,)).logits


logprobs_jit = nnx.jit(logprobs.continuation_logprobs, static_argnames=("group_size", "temperature", "shared_prompt"))


def direct_logprobs(model, prompts, tokens, mask, group_size, temperature=1.0):
    """Independent path: one forward per row over prompt ++ continuation, read off each token."""
    out = []
    patches = np.asarray(prompts.pixel_values).reshape(len(prompts.grids), -1, prompts.pixel_values.shape[-1])
    for row in range(tokens.shape[0]):
        b = row // group_size
        ids = jnp.concatenate([prompts.tokens[b], tokens[row]])[None]
        attn = jnp.concatenate([prompts.mask[b], mask[row]])[None]
        logits = row_logits(model, ids, attn, jnp.asarray(patches[b]), prompts.grids[b])
        p = prompts.tokens.shape[1]
        log_probs = jax.nn.log_softmax(logits[0, p - 1 : -1] / temperature)
        out.append(jnp.take_along_axis(log_probs, tokens[row][:, None], axis=1)[:, 0])
    return np.stack(out)


@pytest.fixture(scope="module")
def setup():
    model = tiny_policy.model()
    prompts = tiny_policy.prompts(batch=2)
    tokens, mask = tiny_policy.completions(2 * G)
    return model, prompts, tokens, mask


@pytest.mark.parametrize("shared", [False, True])
def test_matches_per_row_forward(setup, shared):
    model, prompts, tokens, mask = setup
    got = logprobs_jit(model, prompts, tokens, mask, group_size=G, temperature=0.7,
                                         shared_prompt=shared)
    expected = direct_logprobs(model, prompts, tokens, mask, G, temperature=0.7)
    valid = np.asarray(mask) == 1
    np.testing.assert_allclose(np.asarray(got)[valid], expected[valid], atol=2e-5)


def test_shared_prompt_gives_the_same_gradients(setup):
    model, prompts, tokens, mask = setup
    graphdef, params = nnx.split(model)
    weights = jnp.asarray(mask, jnp.float32) * jnp.linspace(0.5, 1.5, tokens.shape[1])

    def loss(params, shared):
        m = nnx.merge(graphdef, params)
        lp = logprobs.continuation_logprobs(m, prompts, tokens, mask, group_size=G, shared_prompt=shared)
        return jnp.sum(lp * weights)

    full_loss, full_grads = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, False)
    shared_loss, shared_grads = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, True)
    assert float(shared_loss) == pytest.approx(float(full_loss), rel=1e-5)
    flat_full, flat_shared = jax.tree.leaves(full_grads), jax.tree.leaves(shared_grads)
    assert len(flat_full) == len(flat_shared) > 10
    for a, b in zip(flat_full, flat_shared):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
    # The vision tower gets gradient through the prompt in both paths.
    vision_grads = jax.tree.leaves(nnx.state(nnx.merge(graphdef, shared_grads).vision))
    assert any(float(jnp.abs(g).max()) > 0 for g in vision_grads)


def test_text_only_prompts():
    model = tiny_policy.model(seed=1)
    prompts = tiny_policy.prompts(batch=2, with_images=False)
    tokens, mask = tiny_policy.completions(4)
    full = logprobs_jit(model, prompts, tokens, mask, group_size=2)
    shared = logprobs_jit(model, prompts, tokens, mask, group_size=2, shared_prompt=True)
    valid = np.asarray(mask) == 1
    np.testing.assert_allclose(np.asarray(shared)[valid], np.asarray(full)[valid], atol=2e-5)
    assert np.all(np.asarray(full) <= 0)


def test_repeat_prompts_keeps_images_with_their_rows(setup):
    _, prompts, _, _ = setup
    repeated = prompts.repeat(G)
    assert repeated.tokens.shape[0] == 2 * G and len(repeated.grids) == 2 * G
    per_image = np.asarray(repeated.pixel_values).reshape(2 * G, 16, -1)
    original = np.asarray(prompts.pixel_values).reshape(2, 16, -1)
    for row in range(2 * G):
        np.testing.assert_array_equal(per_image[row], original[row // G])


@pytest.mark.parametrize("shared", [False, True])
def test_one_image_per_row_slots_give_the_same_logprobs(setup, shared):
    model, prompts, tokens, mask = setup
    rows = tiny_policy.as_rows(prompts, length=24)
    expected = logprobs_jit(model, prompts, tokens, mask, group_size=G, shared_prompt=shared)
    got = logprobs_jit(model, rows, tokens, mask, group_size=G, shared_prompt=shared)
    valid = np.asarray(mask) == 1
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(expected)[valid], atol=2e-5)


def test_row_slots_split_and_repeat_with_their_rows(setup):
    _, prompts, _, _ = setup
    rows = tiny_policy.as_rows(prompts, length=24)
    micro = rows.split(2)
    assert micro.pixel_values.shape == (2, 1, 24, rows.pixel_values.shape[-1]) and micro.row_grids.shape == (2, 1, 3)
    np.testing.assert_array_equal(np.asarray(micro.pixel_values[1, 0]), np.asarray(rows.pixel_values[1]))
    repeated = rows.repeat(G)
    np.testing.assert_array_equal(np.asarray(repeated.row_grids), np.repeat(np.asarray(rows.row_grids), G, 0))
    np.testing.assert_array_equal(np.asarray(repeated.pixel_values[G]), np.asarray(rows.pixel_values[1]))


def test_bad_shapes_raise(setup):
    model, prompts, tokens, mask = setup
    with pytest.raises(ValueError, match="6 continuations for 2 prompts x group_size 4"):
        logprobs.continuation_logprobs(model, prompts, tokens, mask, group_size=4)
    bad = Prompts(prompts.tokens, prompts.mask, prompts.pixel_values[:20], prompts.grids)
    with pytest.raises(ValueError, match="pixel_values rows"):
        logprobs.continuation_logprobs(model, bad, tokens, mask, group_size=G)


# Chunked LM head: C = 8 continuation positions; chunk sizes that divide it, do not (3), are 1, and exceed it (20).
CHUNK_SIZES = [1, 3, 4, 20]
CHUNK_ATOL = 1e-5  # float32: only the order of the kernel-gradient sums differs


@functools.cache
def logprobs_and_grads(shared, chunk_size):
    """Log-probs (2 * G, 8) and d(weighted sum)/d(params) of the tiny model, at one chunk size."""
    model = tiny_policy.model()
    prompts = tiny_policy.prompts(batch=2)
    tokens, mask = tiny_policy.completions(2 * G, length=8)
    weights = jnp.asarray(mask, jnp.float32) * jnp.linspace(0.5, 1.5, tokens.shape[1])
    graphdef, params = nnx.split(model)

    def loss(params):
        lp = logprobs.continuation_logprobs(nnx.merge(graphdef, params), prompts, tokens, mask, group_size=G,
                                            temperature=0.7, shared_prompt=shared, logits_chunk_size=chunk_size)
        return jnp.sum(lp * weights), lp

    grads, lp = jax.jit(jax.grad(loss, has_aux=True))(params)
    return np.asarray(lp), [np.asarray(g) for g in jax.tree.leaves(grads)]


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_chunked_logprobs_match_unchunked(shared, chunk_size):
    expected, _ = logprobs_and_grads(shared, None)
    got, _ = logprobs_and_grads(shared, chunk_size)
    assert got.shape == expected.shape == (2 * G, 8)
    np.testing.assert_allclose(got, expected, rtol=0, atol=CHUNK_ATOL)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_chunked_gradients_match_unchunked(shared, chunk_size):
    _, expected = logprobs_and_grads(shared, None)
    _, got = logprobs_and_grads(shared, chunk_size)
    assert len(got) == len(expected) > 10
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=CHUNK_ATOL, atol=CHUNK_ATOL)


def test_chunking_shrinks_the_compiled_gradient_temporaries():
    """With vocab 32768 and hidden 32 the logits dominate: 8 rows x 64 positions of them are 64 MiB in float32.

    Measured (XLA CPU): 133 MiB of temporaries unchunked, 21 MiB in chunks of 8 positions.
    """
    model_config = tiny_policy.config(vocab_size=32768)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: qvl.Qwen2VL(model_config, rngs=nnx.Rngs(0))))
    prompts = tiny_policy.prompts(batch=2)
    tokens = jax.ShapeDtypeStruct((2 * 4, 64), jnp.int32)

    def temp_bytes(chunk_size):
        def loss(params, tokens):
            lp = logprobs.continuation_logprobs(nnx.merge(graphdef, params), prompts, tokens, tokens, group_size=4,
                                                shared_prompt=True, logits_chunk_size=chunk_size)
            return jnp.sum(lp)

        return jax.jit(jax.grad(loss)).lower(params, tokens).compile().memory_analysis().temp_size_in_bytes

    unchunked, chunked = temp_bytes(None), temp_bytes(8)
    assert unchunked > 2 * 64 * 2**20  # the logits and their gradient
    assert chunked * 4 < unchunked


@pytest.mark.parametrize("chunk_size", [-1, -128])
def test_negative_chunk_size_raises(setup, chunk_size):
    model, prompts, tokens, mask = setup
    with pytest.raises(ValueError, match=f"chunk_size={chunk_size}: must be"):
        logprobs.continuation_logprobs(model, prompts, tokens, mask, group_size=G, logits_chunk_size=chunk_size)
