"""Demo tokenizer: HF format, Qwen special tokens round-trip, chat template and image pad count."""

import json
import os

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
    prompt = prompts.render_prompt(count)
    answer = regions.render_answer(regions.chain_of_region([(43.452002, 142.615358)])[0], 43.452002, 142.615358)
    target = prompts.render_target(answer)
    prompt_ids, target_ids = tok.encode(prompt), tok.encode(target)
    assert tok.decode(prompt_ids) == prompt and tok.decode(target_ids) == target
    assert prompt_ids.count(tok.special_ids.image_pad) == 64
    start = prompt_ids.index(tok.special_ids.vision_start)
    assert prompt_ids[start + 1 : start + 65] == [tok.special_ids.image_pad] * 64
    assert prompt_ids[start + 65] == tok.special_ids.vision_end
    assert prompt_ids[0] == tok.special_ids.im_start
    assert target_ids[-1] == tok.special_ids.im_end
    # The decoded target parses back to the coordinates.
    parsed = regions.parse_answer(tok.decode(target_ids, skip_special_tokens=True))
    assert parsed.valid and abs(parsed.lat - 43.452002) < 1e-9


def test_prompt_format_matches_qwen_chat_layout():
    text = prompts.render_prompt([2, 1], prompts.PromptConfig(instruction="Where?", system=None))
    assert text == ("<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|>"
                    "<|vision_start|><|image_pad|><|vision_end|>Where?<|im_end|>\n<|im_start|>assistant\n")
    assert prompts.render_prompt(1).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
