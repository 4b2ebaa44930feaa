"""The exported policy serves as it is: transformers loads ``<workdir>/hf`` (weights, tokenizer, generation
config) and answers as geor_jax does; ``export.dtype=bfloat16`` writes bfloat16 tensors transformers loads."""

import json

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import tiny_policy
from geor_jax import evaluate
from geor_jax.data import demo_world, patches, pipeline, prompts
from geor_jax.data import tokenizer as tokenizer_lib
from geor_jax.models import qwen2_5_vl as qvl
from geor_jax.run import build, export

MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random tiny policy on the demo tokenizer, exported in float32 and bfloat16, and 2 test images."""
    root = tmp_path_factory.mktemp("export")
    tok = tokenizer_lib.build_demo_tokenizer(root / "tok", vocab_size=512,
                                             texts=tokenizer_lib.demo_corpus(num_places=500))
    records, _ = demo_world.build_demo_records(str(root / "data"), str(root / "src"), num_images=2, seed=3,
                                               height=56, width=56, split="test")
    tiny_policy.save_for_tokenizer(root / "tok", root / "init")
    graphdef, params = nnx.split(qvl.load_hf_checkpoint(root / "init"))
    for dtype in ("float32", "bfloat16"):
        export.export_policy(graphdef, params, tok, patches.PatchConfig(), str(root / dtype), export.ExportConfig(dtype),
                             MAX_NEW_TOKENS)
    return root, records


def test_transformers_answers_the_export_as_geor_jax_does(setup):
    root, records = setup
    hf_dir = root / "float32"
    data = build.eval_pipeline(pipeline.PipelineConfig(records_dir=records, tokenizer_dir=str(hf_dir),
                                                       buckets=((56, 56),), max_prompt_len=128), records, "test", 2)
    model, tokenizer = build.load_policy(build.ModelConfig(dtype="float32", remat=False, scan_layers=False),
                                         str(hf_dir), str(hf_dir), None)
    ours = evaluate.generate_answers(model, tokenizer, pipeline.make_iterator(data), MAX_NEW_TOKENS)["texts"]
    batch = next(pipeline.make_iterator(data))

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    hf_model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir).eval()
    assert hf_model.generation_config.do_sample is False and hf_model.generation_config.max_new_tokens == MAX_NEW_TOKENS
    text = prompts.render_prompt(4, data.prompt)  # 56 x 56 image: 4 x 4 patches, 4 merged tokens
    ids = hf_tokenizer(text, return_tensors="pt")["input_ids"]
    real = batch.arrays["prompt_mask"][0] == 1
    np.testing.assert_array_equal(ids[0].numpy(), batch.arrays["prompt_tokens"][0][real])  # same prompt
    pixels, rows = batch.arrays["pixel_values"], len(batch.arrays["pixel_values"]) // 2
    theirs = []
    for i in range(2):  # the image's patches are the pipeline's (the processor-level test is issue 15's)
        with torch.no_grad():
            out = hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                    pixel_values=torch.from_numpy(pixels[i * rows:(i + 1) * rows]),
                                    image_grid_thw=torch.tensor([batch.grid_thw]))
        theirs.append(hf_tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    assert theirs == ours and all(theirs), (theirs, ours)


def test_bfloat16_export(setup):
    root, _ = setup
    assert json.loads((root / "bfloat16" / "config.json").read_text())["dtype"] == "bfloat16"
    hf32 = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(root / "float32")
    hf16 = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(root / "bfloat16", dtype="auto")
    assert hf16.dtype == torch.bfloat16
    for (name, p32), (_, p16) in zip(hf32.state_dict().items(), hf16.state_dict().items()):
        assert p16.dtype == torch.bfloat16 and torch.equal(p16, p32.to(torch.bfloat16)), name
    generation = json.loads((root / "bfloat16" / "generation_config.json").read_text())
    tok = tokenizer_lib.load_tokenizer(root / "bfloat16")
    assert generation["eos_token_id"] == list(tok.special_ids.eos) and generation["do_sample"] is False
    assert generation["suppress_tokens"] == sorted({tok.special_ids.image_pad, tok.special_ids.video_pad})
