"""HF checkpoint round trip and config validation."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from geor_jax.models import qwen2_5_vl as qvl
from geor_jax.models.qwen2_5_vl import safetensors_io
from qwen_vl_fixtures import hf_model


@pytest.mark.parametrize("variant,scan_layers", [("qwen2_5_vl", False), ("qwen2_5_vl", True), ("qwen2_vl", False)])
def test_hf_to_nnx_to_hf_round_trip_is_exact(tmp_path, variant, scan_layers):
    from transformers import AutoModelForImageTextToText

    original = hf_model(variant)
    original.save_pretrained(tmp_path / "in", max_shard_size="200KB")
    model = qvl.load_hf_checkpoint(tmp_path / "in", scan_layers=scan_layers)
    qvl.save_hf_checkpoint(model, tmp_path / "out", max_shard_bytes=300_000)

    index = json.loads((tmp_path / "out" / safetensors_io.INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    assert type(reloaded) is type(original)
    expected, got = original.state_dict(), reloaded.state_dict()
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name


def test_bfloat16_save_and_load(tmp_path):
    hf_model("qwen2_5_vl").save_pretrained(tmp_path / "in")
    model = qvl.load_hf_checkpoint(tmp_path / "in")
    qvl.save_hf_checkpoint(model, tmp_path / "bf16", dtype=jnp.bfloat16)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    bf16 = qvl.load_hf_checkpoint(tmp_path / "bf16", param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    expected = model.text.layers[0].mlp.up_proj.kernel[...].astype(jnp.bfloat16)
    got = bf16.text.layers[0].mlp.up_proj.kernel[...]
    assert got.dtype == jnp.bfloat16 and np.array_equal(np.asarray(expected, np.float32), np.asarray(got, np.float32))


def test_missing_tensor_is_named(tmp_path):
    hf_model("qwen2_5_vl").save_pretrained(tmp_path / "in")
    reader = safetensors_io.CheckpointReader(tmp_path / "in")
    tensors = [(n, reader.get(n)) for n in reader.names() if n != "model.norm.weight"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text((tmp_path / "in" / "config.json").read_text())
    safetensors_io.write_safetensors(str(tmp_path / "out" / "model.safetensors"), tensors)
    with pytest.raises(KeyError, match="model.norm.weight"):
        qvl.load_hf_checkpoint(tmp_path / "out")


def _hf_config(**changes):
    config = qvl.to_hf_dict(qvl.from_hf_dict(json.loads(json.dumps(_BASE))))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


_BASE = {
    "model_type": "qwen2_5_vl",
    "image_token_id": 250, "video_token_id": 251, "vision_start_token_id": 252, "vision_end_token_id": 253,
    "text_config": {
        "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    },
    "vision_config": {
        "depth": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 48, "out_hidden_size": 64,
        "window_size": 56, "fullatt_block_indexes": [1],
    },
}


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"text_config.rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 4]}}, "text_config.rope_parameters.mrope_section"),
        ({"vision_config.out_hidden_size": 48}, "vision_config.out_hidden_size"),
        ({"text_config.vocab_size": 200}, "image_token_id"),
        ({"text_config.vocab_size": 0}, "text_config.vocab_size"),
        ({"text_config.num_key_value_heads": 3}, "text_config.num_key_value_heads"),
        ({"text_config.num_attention_heads": 5}, "text_config.num_attention_heads"),
        ({"vision_config.window_size": 50}, "vision_config.window_size"),
        ({"vision_config.fullatt_block_indexes": [2]}, "vision_config.fullatt_block_indexes"),
        ({"text_config.hidden_act": "relu"}, "text_config.hidden_act"),
        ({"model_type": "llava"}, "model_type"),
    ],
)
def test_config_errors_name_the_field(changes, field):
    with pytest.raises(qvl.ConfigError) as error:
        qvl.from_hf_dict(_hf_config(**changes))
    assert error.value.field == field
    assert str(error.value).startswith(field)


def test_flat_hub_config_layout_is_read():
    """Original Hub config.json files keep text fields at the top level with rope_scaling."""
    flat = dict(_BASE["text_config"], **{k: v for k, v in _BASE.items() if k != "text_config"})
    flat.pop("rope_parameters")
    flat.update(rope_theta=1e6, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, tie_word_embeddings=True)
    config = qvl.from_hf_dict(flat)
    assert config.text.mrope_section == (2, 3, 3) and config.text.rope_theta == 1e6
    assert config.text.tie_word_embeddings and config.vision.window_size == 56
