"""Demo tokenizer: HF format, Qwen special tokens round-trip, chat template; prompt ids equal the processor's."""

import json
import os

import numpy as np
import PIL.Image
import pytest

from geor_jax import regions
from geor_jax.data import patches, prompts, tokenizer


@pytest.fixture(scope="module")
def demo_tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    return tokenizer.build_demo_tokenizer(out, vocab_size=2048, texts=tokenizer.demo_corpus(num_places=1500)), out


def test_saved_in_hf_format_and_loads_with_autotokenizer(demo_tok):
    tok, out = demo_tok
    assert sorted(os.listdir(out)) == ["tokenizer.json", "tokenizer_config.json"]
    config = json.load(open(out / "tokenizer_config.json"))
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"
    again = tokenizer.load_tokenizer(out)
    assert again.special_ids == tok.special_ids
    assert tok.vocab_size <= 2048


def test_special_tokens_are_single_ids_and_round_trip(demo_tok):
    tok, _ = demo_tok
    ids = tok.special_ids
    assert ids.image_pad == tok.vocab_size - 2 and ids.video_pad == tok.vocab_size - 1  # Qwen order: last
    for text in tokenizer.QWEN_SPECIAL_TOKENS:
        encoded = tok.encode(text)
        assert len(encoded) == 1, text
        assert tok.decode(encoded) == text
    overrides = ids.model_config_overrides()
    assert overrides["image_token_id"] == ids.image_pad
    assert overrides["vision_start_token_id"] == ids.vision_start
    assert overrides["eos_token_id"] == [ids.im_end, ids.endoftext]


def test_prompt_and_target_round_trip_with_image_pads(demo_tok):
    tok, _ = demo_tok
    grid = (1, 16, 16)
    count = patches.num_image_tokens(grid, merge_size=2)
    assert count == 64
    prompt_ids = prompts.prompt_template(tok).ids(count)
    answer = regions.render_answer(regions.chain_of_region([(43.452002, 142.615358)])[0], 43.452002, 142.615358)
    target = prompts.render_target(answer)
    target_ids = tok.encode(target)
    assert tok.decode(target_ids) == target
    assert prompt_ids.count(tok.special_ids.image_pad) == 64
    start = prompt_ids.index(tok.special_ids.vision_start)
    assert prompt_ids[start + 1 : start + 65] == [tok.special_ids.image_pad] * 64
    assert prompt_ids[start + 65] == tok.special_ids.vision_end
    assert prompt_ids[0] == tok.special_ids.im_start
    assert target_ids[-1] == tok.special_ids.im_end
    # The decoded target parses back to the coordinates.
    parsed = regions.parse_answer(tok.decode(target_ids, skip_special_tokens=True))
    assert parsed.valid and abs(parsed.lat - 43.452002) < 1e-9


def test_demo_template_lays_out_turns_as_qwen2_5_vl(demo_tok):
    tok, _ = demo_tok
    ids = prompts.prompt_template(tok, prompts.PromptConfig(instruction="Where?")).ids(2)
    assert tok.decode(ids) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                               "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>Where?<|im_end|>\n"
                               "<|im_start|>assistant\n")
    own_system = prompts.prompt_template(tok, prompts.PromptConfig(instruction="Where?", system="Be brief."))
    assert tok.decode(own_system.ids(1)).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


# An edited template: another system default and a plain-text turn layout.
EDITED_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nGeolocate.<|im_end|>\n"
    "{% endif %}### {{ m['role'] | upper }}: {% for p in m['content'] %}{% if p['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>\n{% else %}{{ p['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}### ASSISTANT:{% endif %}"
)


@pytest.mark.parametrize("template", ["demo", "edited"])
@pytest.mark.parametrize("system", [None, "Answer in English."])
def test_prompt_ids_equal_the_processors_chat_template_and_image_expansion(demo_tok, tmp_path, template, system):
    from qwen_vl_fixtures import hf_processor

    _, out = demo_tok
    directory = tmp_path / "checkpoint"
    hf_tok = tokenizer.load_tokenizer(out).hf
    if template == "edited":
        hf_tok.chat_template = EDITED_TEMPLATE
    hf_tok.save_pretrained(directory)
    patch_config = patches.PatchConfig(max_pixels=100352)
    (directory / patches.PREPROCESSOR_FILE).write_text(json.dumps(patches.preprocessor_dict(patch_config)))
    processor = hf_processor(directory)
    config = prompts.PromptConfig(instruction="Where was this taken?", system=system)
    ours = prompts.prompt_template(tokenizer.load_tokenizer(directory), config)
    rng = np.random.default_rng(0)
    for height, width in ((300, 500), (640, 480), (50, 60)):
        image = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        messages = prompts.chat_messages(config)
        messages[-1]["content"][0]["image"] = image
        expected = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True, return_tensors="np")
        grid = patches.process_image(image, patch_config)[1]
        np.testing.assert_array_equal(expected["image_grid_thw"][0], grid)
        assert ours.ids(patches.num_image_tokens(grid)) == expected["input_ids"][0].tolist()
    if template == "edited":
        assert "### USER: " in processor.tokenizer.decode(ours.prefix)


def test_a_tokenizer_without_chat_template_is_an_error(demo_tok, tmp_path):
    _, out = demo_tok
    hf_tok = tokenizer.load_tokenizer(out).hf
    hf_tok.chat_template = None
    hf_tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has no chat template"):
        prompts.prompt_template(tokenizer.load_tokenizer(tmp_path))
