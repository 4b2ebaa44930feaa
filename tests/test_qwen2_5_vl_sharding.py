"""Sharded forward on the 8-device CPU mesh, sharded creation, and bf16 vs fp32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from geor_jax import sharding
from geor_jax.models import qwen2_5_vl as qvl
import tiny_policy
from qwen_vl_fixtures import GRID_A, GRID_B, hf_model, left_pad, nnx_logits, patches, prompt


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2_5_vl")
    hf_model("qwen2_5_vl").save_pretrained(path, max_shard_size="200KB")
    return path


@pytest.fixture(scope="module")
def inputs():
    """8 left-padded rows (the batch splits over up to 8 devices), one image each, two grid sizes."""
    grids = (GRID_A, GRID_B) * 4
    rng = np.random.RandomState(11)
    ids, mask = left_pad([prompt(rng, rng.randint(1, 6), (grid,), rng.randint(0, 6)) for grid in grids])
    return ids, mask, patches(grids, 1176), grids


@pytest.fixture(scope="module")
def reference(checkpoint, inputs):
    ids, mask, pix, grids = inputs
    return nnx_logits(qvl.load_hf_checkpoint(checkpoint), ids, mask, pix, grids)


@pytest.mark.parametrize("fsdp,tensor,scan_layers", [(2, 4, False), (8, 1, False), (2, 4, True)])
def test_sharded_forward_matches_single_device(checkpoint, inputs, reference, fsdp, tensor, scan_layers):
    mesh = sharding.make_mesh(data=1, fsdp=fsdp, tensor=tensor)
    model = qvl.load_hf_checkpoint(checkpoint, mesh=mesh, scan_layers=scan_layers)
    kernel = model.text.layers[0].mlp.gate_proj.kernel if not scan_layers else model.text.layers.mlp.gate_proj.kernel
    expected = PartitionSpec("fsdp", "tensor") if tensor > 1 else PartitionSpec("fsdp")
    if scan_layers:
        expected = PartitionSpec(None, *expected)
    assert kernel[...].sharding.spec == expected
    assert len(kernel[...].sharding.device_set) == 8

    ids, mask, pix, grids = inputs
    ids = jax.device_put(jnp.asarray(ids), sharding.batch_sharding(mesh, 2))
    mask = jax.device_put(jnp.asarray(mask), sharding.batch_sharding(mesh, 2))
    with jax.set_mesh(mesh):
        got = nnx_logits(model, ids, mask, pix, grids)
    real = np.asarray(mask).astype(bool)
    assert np.max(np.abs(got[real] - reference[real])) <= 1e-5


def test_logical_axes_drop_mesh_axes_that_do_not_divide():
    mesh = sharding.make_mesh(fsdp=2, tensor=4)
    # 2 KV heads cannot split 4 ways: replicated; the 64-wide embed splits over fsdp.
    # Specs carry no trailing Nones: the form jit gives its outputs (see logical_to_spec).
    assert sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 2, 16), mesh) == PartitionSpec("fsdp")
    assert sharding.logical_to_spec(("embed", "heads", "head_dim"), (64, 4, 16), mesh) == PartitionSpec("fsdp", "tensor")
    assert sharding.logical_to_spec(("head_dim", "heads"), (16, 4), mesh) == PartitionSpec(None, "tensor")
    assert sharding.logical_to_spec(("head_dim",), (16,), mesh) == PartitionSpec()


def test_logical_axes_drop_mesh_axes_the_mesh_lacks():
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    assert sharding.logical_to_spec(("batch", "embed"), (8, 64), mesh) == PartitionSpec()


def test_constrain_follows_the_rules_under_a_mesh_and_is_a_no_op_without():
    x = jnp.ones((8, 4, 64))
    assert sharding.constrain(x, ("batch", None, "embed")) is x
    with jax.set_mesh(sharding.make_mesh(fsdp=2, tensor=4)):
        rows = jax.jit(lambda x: sharding.constrain(x, ("batch", None, "embed")))(x)
        width = jax.jit(lambda x: sharding.constrain(x, (None, None, "embed")))(x)
    assert rows.sharding.spec == PartitionSpec("fsdp")  # fsdp splits the rows, so not the width too
    assert width.sharding.spec == PartitionSpec(None, None, "fsdp")


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decoder_activations_are_split_over_rows(checkpoint, inputs, scan_layers):
    """The final hidden states come out split over the batch rows, not over the FSDP-split width that
    the embedding table hands on (with which every device held every row's activations and logits)."""
    mesh = sharding.make_mesh(fsdp=8)
    model = qvl.load_hf_checkpoint(checkpoint, mesh=mesh, scan_layers=scan_layers)
    assert model.text.embed_tokens[...].sharding.spec == PartitionSpec(None, "fsdp")
    graphdef, state = nnx.split(model)
    ids, mask, pix, grids = inputs
    ids, mask = (jax.device_put(jnp.asarray(x), sharding.batch_sharding(mesh, 2)) for x in (ids, mask))

    @jax.jit
    def hidden_states(state, ids, mask, pix):
        return nnx.merge(graphdef, state).hidden_states(ids, mask, pixel_values=pix, image_grid_thw=grids)[0]

    with jax.set_mesh(mesh):
        hidden = hidden_states(state, ids, mask, jnp.asarray(pix))
    assert hidden.sharding.spec == PartitionSpec("fsdp")


def test_vision_patches_are_split_over_rows():
    """The vision tower pins its patches to rows under a mesh. On this tiny model XLA would pick rows
    anyway; on 7B it split the width and kept all images' attention scores on every device
    (4.3 GB per block for SFT at 64 images: tools/plan_memory.py)."""
    model = tiny_policy.model()
    prompts = tiny_policy.prompts(batch=8)
    graphdef, state = nnx.split(model)
    with jax.set_mesh(sharding.make_mesh(fsdp=8)):
        jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s).vision(x, prompts.grids))(
            state, prompts.pixel_values)
    constraints = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "sharding_constraint"]
    assert [(e.params["sharding"].spec, e.invars[0].aval.shape[0]) for e in constraints] == [
        (PartitionSpec("fsdp"), prompts.pixel_values.shape[0])]


def test_create_sharded_model_places_every_parameter(checkpoint):
    mesh = sharding.make_mesh(fsdp=2, tensor=4)
    config = qvl.load_config(checkpoint)
    model = sharding.create_sharded_model(lambda: qvl.Qwen2VL(config, rngs=nnx.Rngs(0)), mesh)
    sharded_dims = 0
    for path, var in nnx.to_flat_state(nnx.state(model)):
        spec = sharding.logical_to_spec(var.get_metadata("logical_axes"), var.shape, mesh)
        assert var[...].sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, spec), var.ndim), path
        sharded_dims += sum(axis is not None for axis in spec)
        if path[-1] == "kernel":
            assert 0.01 < float(jnp.std(var[...])) < 0.03, path  # initialised, not zeros
    assert sharded_dims > 50


def test_bfloat16_forward_close_to_float32(checkpoint, inputs, reference):
    """bf16 params and compute: logits within 5% of the fp32 logit range; argmax mostly agrees."""
    ids, mask, pix, grids = inputs
    model = qvl.load_hf_checkpoint(checkpoint, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert model.text.layers[0].mlp.up_proj.kernel[...].dtype == jnp.bfloat16
    got = nnx_logits(model, ids, mask, pix, grids)
    real = mask.astype(bool)
    scale = np.max(np.abs(reference[real]))
    max_diff = np.max(np.abs(got[real] - reference[real]))
    assert got.dtype == np.float32
    assert max_diff <= 0.05 * scale, (max_diff, scale)
    agreement = np.mean(got[real].argmax(-1) == reference[real].argmax(-1))
    assert agreement >= 0.9, agreement


def test_bfloat16_weights_with_float32_compute(checkpoint, inputs, reference):
    """bf16 weights never upcast: every matmul takes bf16 operands and returns float32 activations."""
    ids, mask, pix, grids = inputs
    model = qvl.load_hf_checkpoint(checkpoint, dtype=jnp.float32, param_dtype=jnp.bfloat16)
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda st: nnx.merge(graphdef, st)(
        jnp.asarray(ids), jnp.asarray(mask), pixel_values=jnp.asarray(pix), image_grid_thw=grids).logits)(state)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    kernels = {v for v, p in zip(jaxpr.jaxpr.invars, paths) if "kernel" in p or "embed_tokens" in p}
    assert len(kernels) >= 7 * model.config.text.num_layers
    widened = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "convert_element_type" and e.invars[0] in kernels]
    assert not widened, widened[:3]
    weight_dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"
                   and any(v.aval.dtype == jnp.bfloat16 for v in e.invars)]
    assert len(weight_dots) >= 7 * model.config.text.num_layers
    for eqn in weight_dots:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16, jnp.bfloat16]
        assert eqn.outvars[0].aval.dtype == jnp.float32
    got = nnx_logits(model, ids, mask, pix, grids)
    real = mask.astype(bool)
    assert np.max(np.abs(got[real] - reference[real])) <= 0.05 * np.max(np.abs(reference[real]))
