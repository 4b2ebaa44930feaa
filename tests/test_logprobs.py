"""geor_jax.logprobs: continuation log-probs, full vs shared-prompt forward (values and grads)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tiny_policy
from geor_jax import logprobs
from geor_jax.models import qwen2_5_vl as qvl

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
    repeated = logprobs.repeat_prompts(prompts, G)
    assert repeated.tokens.shape[0] == 2 * G and len(repeated.grids) == 2 * G
    per_image = np.asarray(repeated.pixel_values).reshape(2 * G, 16, -1)
    original = np.asarray(prompts.pixel_values).reshape(2, 16, -1)
    for row in range(2 * G):
        np.testing.assert_array_equal(per_image[row], original[row // G])


def test_bad_shapes_raise(setup):
    model, prompts, tokens, mask = setup
    with pytest.raises(ValueError, match="6 continuations for 2 prompts x group_size 4"):
        logprobs.continuation_logprobs(model, prompts, tokens, mask, group_size=4)
    bad = logprobs.Prompts(prompts.tokens, prompts.mask, prompts.pixel_values[:20], prompts.grids)
    with pytest.raises(ValueError, match="pixel_values rows"):
        logprobs.continuation_logprobs(model, bad, tokens, mask, group_size=G)
