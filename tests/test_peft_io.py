"""models/qwen2_5_vl/peft_io: LoRA adapters in PEFT's format, checked against the ``peft`` package on transformers'
Qwen2.5-VL (fp32, max abs logit diff <= 1e-4, the parity tests' tolerance), both ways, and refused by name when
they do not fit."""

import json

import jax
import numpy as np
import pytest
import torch

import qwen_vl_fixtures as fx
from geor_jax import lora
from geor_jax.models import qwen2_5_vl as qvl
from geor_jax.models.qwen2_5_vl import peft_io

TOL = 1e-4
CONFIG = lora.LoRAConfig(rank=4, alpha=8.0, targets=lora.TARGETS)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("peft") / "base"
    fx.hf_model("qwen2_5_vl").save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def inputs():
    grids = [fx.GRID_A]
    ids, mask = fx.left_pad([fx.prompt(np.random.RandomState(0), 3, grids, 4),
                             fx.prompt(np.random.RandomState(1), 1, grids, 2)])
    return ids, mask, fx.patches(grids * 2, 3 * 2 * 14 * 14), grids * 2


def max_diff(a, b, inputs) -> float:
    """Max abs logit difference over real (unpadded) positions: padded ones are undefined in both."""
    real = inputs[1].astype(bool)
    return float(np.abs(a[real] - b[real]).max())


def adapted(base_dir, scan_layers, seed=0):
    model = qvl.load_hf_checkpoint(base_dir, scan_layers=scan_layers)
    return lora.add_adapters(model, CONFIG, jax.random.key(seed))


def test_our_adapter_loads_in_peft_with_the_same_logits(base_dir, inputs, tmp_path):
    from peft import PeftModel

    model = adapted(base_dir, scan_layers=True)
    for i, (_, dense) in enumerate(lora.adapted_modules(model)):  # B != 0: the adapters change the logits
        b = dense.lora.lora_b
        b.set_value(0.05 * jax.random.normal(jax.random.key(i), b.shape))
    peft_io.save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(base_dir))
    config = json.loads((tmp_path / "adapter" / peft_io.CONFIG_FILE).read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8)

    ours = fx.nnx_logits(model, *inputs)
    assert max_diff(ours, fx.nnx_logits(lora.without_adapters(model), *inputs), inputs) > 0.1
    theirs = fx.hf_logits(PeftModel.from_pretrained(fx.hf_model("qwen2_5_vl"), tmp_path / "adapter").eval(), *inputs)
    assert max_diff(ours, theirs, inputs) <= TOL

    # Loaded back (fresh adapters of another seed): the same model, bitwise.
    reloaded = adapted(base_dir, scan_layers=True, seed=5)
    peft_io.load_adapter(reloaded, tmp_path / "adapter")
    np.testing.assert_array_equal(fx.nnx_logits(reloaded, *inputs), ours)


def test_peft_trained_adapter_loads_here_with_the_same_logits(base_dir, inputs, tmp_path):
    """An adapter made and saved by ``peft`` itself (what another trainer hands over) continues here."""
    from peft import LoraConfig, get_peft_model

    hf = get_peft_model(fx.hf_model("qwen2_5_vl"), LoraConfig(
        r=4, lora_alpha=8, target_modules=r".*(?:layers\.\d+\.(?:self_attn|mlp)\.\w+_proj|blocks\.\d+\.(?:attn\.(?:qkv|"
                                          r"proj)|mlp\.\w+_proj)|merger\.mlp\.[02])", task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    hf.save_pretrained(tmp_path / "peft")
    model = adapted(base_dir, scan_layers=True)
    peft_io.load_adapter(model, tmp_path / "peft")
    theirs = fx.hf_logits(hf.eval(), *inputs)
    assert max_diff(fx.nnx_logits(model, *inputs), theirs, inputs) <= TOL
    assert max_diff(fx.nnx_logits(lora.without_adapters(model), *inputs), theirs, inputs) > 0.1


def test_adapters_that_do_not_fit_are_refused_by_name(base_dir, tmp_path):
    model = adapted(base_dir, scan_layers=False)
    peft_io.save_adapter(model, tmp_path / "adapter")
    other_rank = qvl.load_hf_checkpoint(base_dir)
    lora.add_adapters(other_rank, lora.LoRAConfig(rank=2, alpha=4.0, targets=lora.TARGETS), jax.random.key(0))
    with pytest.raises(ValueError, match="r=4.*rank 2"):
        peft_io.load_adapter(other_rank, tmp_path / "adapter")
    fewer = qvl.load_hf_checkpoint(base_dir)
    lora.add_adapters(fewer, lora.LoRAConfig(rank=4, alpha=8.0, targets=("q", "v")), jax.random.key(0))
    with pytest.raises(ValueError, match="which the model does not adapt"):
        peft_io.load_adapter(fewer, tmp_path / "adapter")
    config_path = tmp_path / "adapter" / peft_io.CONFIG_FILE
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {"use_dora": True}))
    with pytest.raises(ValueError, match="use_dora=True is not supported"):
        peft_io.load_adapter(model, tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter directory"):
        peft_io.load_adapter(model, tmp_path)
    with pytest.raises(ValueError, match="merge them into its weights first"):  # a plain HF export has no slot
        qvl.save_hf_checkpoint(model, tmp_path / "hf")
