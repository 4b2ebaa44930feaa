"""``export.dtype=bfloat16`` writes bfloat16 tensors transformers loads, next to the generation config it takes as
its defaults. (transformers answering the export as geor_jax's sampler does, through ``AutoProcessor`` and those
defaults: tests/test_hf_export.py.)"""

import json

import pytest
import torch
import transformers
from flax import nnx

import tiny_policy
from geor_jax.data import patches
from geor_jax.data import tokenizer as tokenizer_lib
from geor_jax.models import qwen2_5_vl as qvl
from geor_jax.run import export

MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A random tiny policy on the demo tokenizer, exported in float32 and bfloat16."""
    root = tmp_path_factory.mktemp("export")
    tok = tokenizer_lib.build_demo_tokenizer(root / "tok", vocab_size=512,
                                             texts=tokenizer_lib.demo_corpus(num_places=500))
    tiny_policy.save_for_tokenizer(root / "tok", root / "init")
    graphdef, params = nnx.split(qvl.load_hf_checkpoint(root / "init"))
    for dtype in ("float32", "bfloat16"):
        export.export_policy(graphdef, params, tok, patches.PatchConfig(), str(root / dtype),
                             export.ExportConfig(dtype), MAX_NEW_TOKENS)
    return root


def test_bfloat16_export(root):
    assert json.loads((root / "bfloat16" / "config.json").read_text())["dtype"] == "bfloat16"
    hf32 = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(root / "float32")
    hf16 = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(root / "bfloat16", dtype="auto")
    assert hf16.dtype == torch.bfloat16
    for (name, p32), (_, p16) in zip(hf32.state_dict().items(), hf16.state_dict().items()):
        assert p16.dtype == torch.bfloat16 and torch.equal(p16, p32.to(torch.bfloat16)), name
    tok = tokenizer_lib.load_tokenizer(root / "bfloat16")
    generation = json.loads((root / "bfloat16" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == list(tok.special_ids.eos) and generation["do_sample"] is False
    assert generation["suppress_tokens"] == sorted({tok.special_ids.image_pad, tok.special_ids.video_pad})
    loaded = hf16.generation_config  # what generate() uses when a request gives nothing
    assert loaded.do_sample is False and loaded.max_new_tokens == MAX_NEW_TOKENS
    assert loaded.pad_token_id == tok.special_ids.pad
