"""HF checkpoint round trip and config validation."""

import json
import os
import re
import shutil
import struct
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from geor_jax.models import qwen2_5_vl as qvl
from geor_jax.models.qwen2_5_vl import safetensors_io
import tiny_policy
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


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """The tiny NNX policy saved as a 5-shard HF checkpoint, written once per module."""
    path = tmp_path_factory.mktemp("tiny") / "ckpt"
    qvl.save_hf_checkpoint(tiny_policy.model(), path, max_shard_bytes=40_000)
    return path


@pytest.fixture
def tiny_ckpt(saved_tiny, tmp_path):
    """A private copy of the saved tiny checkpoint, free to damage."""
    return Path(shutil.copytree(saved_tiny, tmp_path / "ckpt"))


def _weight_map(ckpt: Path) -> dict:
    return json.loads((ckpt / safetensors_io.INDEX_FILE).read_text())["weight_map"]


def _replace_tensor(ckpt: Path, name: str, change) -> Path:
    """Rewrite the shard holding ``name`` with the repo's writer, ``change`` applied to that tensor."""
    shard = _weight_map(ckpt)[name]
    reader = safetensors_io.CheckpointReader(ckpt)
    tensors = [(n, np.array(reader.get(n))) for n, f in _weight_map(ckpt).items() if f == shard]
    safetensors_io.write_safetensors(str(ckpt / shard), [(n, change(a) if n == name else a) for n, a in tensors])
    return ckpt / shard


def _raw_shard(path: Path) -> tuple[dict, bytes]:
    """(header, data bytes) of a safetensors file, parsed by hand."""
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def _write_raw_shard(path: Path, header: dict, data: bytes) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _last_tensor(header: dict) -> str:
    return max((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"])


@pytest.mark.parametrize(
    "name,change,scan_layers",
    [
        ("model.layers.0.mlp.up_proj.weight", lambda a: np.ascontiguousarray(a.T), False),  # (64, 32) transposed
        ("model.layers.1.mlp.down_proj.weight", lambda a: np.ascontiguousarray(a.T), True),  # stacked layers
        ("model.layers.0.self_attn.q_proj.weight", lambda a: a[None], False),  # extra unit dimension
        ("model.norm.weight", lambda a: a[:, None], False),
        ("model.layers.0.self_attn.q_proj.bias", lambda a: a.reshape(4, 8), False),  # the NNX (heads, head_dim)
        ("visual.patch_embed.proj.weight", lambda a: a.reshape(a.shape[0], -1), False),  # the 5-D conv flattened
    ],
)
def test_wrong_shape_with_right_size_is_named(tiny_ckpt, name, change, scan_layers):
    expected = safetensors_io.CheckpointReader(tiny_ckpt).shape(name)
    shard = _replace_tensor(tiny_ckpt, name, change)
    got = safetensors_io.CheckpointReader(tiny_ckpt).shape(name)
    assert got != expected and np.prod(got) == np.prod(expected)
    with pytest.raises(qvl.CheckpointFileError) as error:
        qvl.load_hf_checkpoint(tiny_ckpt, scan_layers=scan_layers)
    message = str(error.value)
    assert str(shard) in message and name in message and str(got) in message and str(expected) in message
    assert "\n" not in message


def test_integer_tensor_for_a_weight_is_named(tiny_ckpt):
    name = "model.layers.0.mlp.up_proj.weight"
    shard = _replace_tensor(tiny_ckpt, name, lambda a: np.round(a * 100).astype(np.int32))
    with pytest.raises(qvl.CheckpointFileError, match=r"dtype int32, but parameter .* needs a float dtype") as error:
        qvl.load_hf_checkpoint(tiny_ckpt)
    assert str(shard) in str(error.value) and name in str(error.value)


@pytest.mark.parametrize("cut_in", ["length", "header", "data"])
def test_truncated_shard_names_file_and_tensor(tiny_ckpt, cut_in):
    shard = tiny_ckpt / sorted(set(_weight_map(tiny_ckpt).values()))[1]
    header, data = _raw_shard(shard)
    size = shard.stat().st_size
    data_start = size - len(data)
    cut = {"length": 5, "header": data_start // 2, "data": (data_start + size) // 2}[cut_in]
    os.truncate(shard, cut)
    with pytest.raises(qvl.CheckpointFileError) as error:
        qvl.load_hf_checkpoint(tiny_ckpt)
    message = str(error.value)
    assert str(shard) in message and "\n" not in message
    if cut_in == "data":
        offset = cut - data_start
        (torn,) = [n for n, i in header.items() if n != "__metadata__" and i["data_offsets"][0] <= offset < i["data_offsets"][1]]
        assert f"tensor {torn}:" in message


def _claims_more_than_the_file(header: dict) -> str:
    """The last tensor's shape and end offset grow by one row: the header now claims bytes the file lacks."""
    info = header[_last_tensor(header)]
    row = np.prod(info["shape"][1:], dtype=int) * 4
    info["shape"][0] += 1
    info["data_offsets"][1] += int(row)
    return _last_tensor(header)


def _unknown_dtype(header: dict) -> str:
    header[_last_tensor(header)]["dtype"] = "Q4"
    return _last_tensor(header)


def _shape_disagrees_with_offsets(header: dict) -> str:
    header[_last_tensor(header)]["shape"][0] += 1
    return _last_tensor(header)


@pytest.mark.parametrize("edit", [_claims_more_than_the_file, _unknown_dtype, _shape_disagrees_with_offsets])
def test_bad_header_names_file_and_tensor(tiny_ckpt, edit):
    shard = tiny_ckpt / sorted(set(_weight_map(tiny_ckpt).values()))[1]
    header, data = _raw_shard(shard)
    tensor = edit(header)
    _write_raw_shard(shard, header, data)
    with pytest.raises(qvl.CheckpointFileError) as error:
        qvl.load_hf_checkpoint(tiny_ckpt)
    message = str(error.value)
    assert str(shard) in message and f"tensor {tensor}:" in message and "\n" not in message


def test_header_length_past_end_of_file_names_file(tiny_ckpt):
    shard = tiny_ckpt / sorted(set(_weight_map(tiny_ckpt).values()))[0]
    blob = shard.read_bytes()
    shard.write_bytes(struct.pack("<Q", len(blob)) + blob[8:])
    with pytest.raises(qvl.CheckpointFileError, match=re.escape(str(shard))):
        qvl.load_hf_checkpoint(tiny_ckpt)


def _index_not_json(index: dict) -> str:
    return "{" + json.dumps(index)


def _index_without_weight_map(index: dict) -> str:
    return json.dumps({"metadata": index["metadata"]})


def _index_with_missing_shard(index: dict) -> str:
    index["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors"
    return json.dumps(index)


def _index_with_wrong_shard(index: dict) -> str:
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00005.safetensors"
    return json.dumps(index)


@pytest.mark.parametrize(
    "corrupt,named",
    [
        (_index_not_json, []),
        (_index_without_weight_map, ["weight_map"]),
        (_index_with_missing_shard, ["model-00009-of-00009.safetensors"]),
        (_index_with_wrong_shard, ["model.norm.weight", "model-00001-of-00005.safetensors"]),
    ],
)
def test_malformed_index_names_index_file(tiny_ckpt, corrupt, named):
    index_path = tiny_ckpt / safetensors_io.INDEX_FILE
    index_path.write_text(corrupt(json.loads(index_path.read_text())))
    with pytest.raises(qvl.CheckpointFileError) as error:
        qvl.load_hf_checkpoint(tiny_ckpt)
    message = str(error.value)
    assert str(index_path) in message and all(n in message for n in named) and "\n" not in message


def test_tensor_in_two_shards_names_both(tiny_ckpt):
    first, second = sorted(set(_weight_map(tiny_ckpt).values()))[:2]
    name = next(n for n, f in _weight_map(tiny_ckpt).items() if f == first)
    reader = safetensors_io.CheckpointReader(tiny_ckpt)
    tensors = [(n, np.array(reader.get(n))) for n, f in _weight_map(tiny_ckpt).items() if f == second]
    safetensors_io.write_safetensors(str(tiny_ckpt / second), tensors + [(name, np.array(reader.get(name)))])
    with pytest.raises(qvl.CheckpointFileError) as error:
        qvl.load_hf_checkpoint(tiny_ckpt)
    message = str(error.value)
    assert first in message and second in message and name in message


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
