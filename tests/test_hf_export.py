"""The HF export carries the processor: transformers' image processor, tokenizer (chat template) and ``generate``
on the export give the same greedy answer, stopping at the same end token, as geor_jax's sampler on a
native-resolution image."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import torch
from flax import nnx

import tiny_policy
from geor_jax import regions, sampling, sft, train_state
from geor_jax.data import patches, prompts
from geor_jax.data import tokenizer as tokenizer_lib
from geor_jax.rollout import Prompts
from geor_jax.run import export as run_export
from qwen_vl_fixtures import hf_processor

PATCH = patches.PatchConfig(max_pixels=28 * 28 * 48)  # at most 48 image tokens
INSTRUCTION = "Where was this photo taken?"
MAX_NEW = 64  # the answer is ~45 tokens (digits one by one)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny model taught one CoR answer for one 150x90 photo by a few SFT steps, exported with its processor."""
    root = tmp_path_factory.mktemp("export")
    tok = tokenizer_lib.build_demo_tokenizer(root / "tok", vocab_size=512,
                                             texts=tokenizer_lib.demo_corpus(num_places=300))
    ids = {k: v for k, v in tok.special_ids.model_config_overrides().items()
           if k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    model = tiny_policy.model(model_config=tiny_policy.config(vocab_size=tok.vocab_size, **ids))
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8))
    pixel_values, grid = patches.process_image(image, PATCH)
    prompt = prompts.prompt_template(tok, prompts.PromptConfig(instruction=INSTRUCTION)).ids(
        patches.num_image_tokens(grid))
    answer = regions.render_answer(regions.Region("Japan", "JP", "Hokkaido", "Biei", 0.0), 43.452002, 142.615358)
    target = tok.encode(prompts.render_target(answer))
    batch = Prompts(jnp.asarray([prompt], jnp.int32), jnp.ones((1, len(prompt)), jnp.int32),
                    jnp.asarray(pixel_values[None]), (), jnp.asarray([grid], jnp.int32))
    optimizer = train_state.OptimizerConfig(learning_rate=3e-2, warmup_steps=5, total_steps=60).make()
    graphdef, state = train_state.create_train_state(model, optimizer, jax.random.key(0))
    step = sft.make_sft_step(graphdef, optimizer)
    for _ in range(60):
        state, metrics = step(state, batch, jnp.asarray([target], jnp.int32), jnp.ones((1, len(target)), jnp.int32))
    run_export.export_policy(graphdef, state.params, tok, PATCH, str(root / "hf"), run_export.ExportConfig(), MAX_NEW)
    return root / "hf", nnx.merge(graphdef, state.params), tok, image, float(metrics["loss"])


def test_export_holds_the_processor_files(export):
    directory, _, tok, _, _ = export
    names = {p.name for p in directory.iterdir()}
    assert {"config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "generation_config.json"} <= names
    assert patches.load_patch_config(directory) == PATCH
    generation = json.loads((directory / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tok.special_ids.im_end, tok.special_ids.endoftext]
    assert tokenizer_lib.load_tokenizer(directory).hf.chat_template == tok.hf.chat_template


def test_transformers_generate_on_the_export_equals_the_sampler(export):
    from transformers import Qwen2_5_VLForConditionalGeneration

    directory, model, tok, image, loss = export
    assert loss < 0.5  # the answer was learnt, so greedy decoding ends with <|im_end|>
    processor = hf_processor(directory)
    messages = prompts.chat_messages(prompts.PromptConfig(instruction=INSTRUCTION))
    messages[-1]["content"][0]["image"] = image
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(directory).eval()
    with torch.no_grad():
        # the export's generation_config.json: greedy, MAX_NEW tokens, stop at <|im_end|>
        generated = hf.generate(**inputs)[0, inputs["input_ids"].shape[1]:]

    # geor_jax: the same image as the pipeline makes it, one image per row in a patch slot.
    pixel_values, grid = patches.process_image(image, patches.load_patch_config(directory))
    slot = np.zeros((1, len(pixel_values) + 12, pixel_values.shape[1]), np.float32)
    slot[0, : len(pixel_values)] = pixel_values
    ids = inputs["input_ids"].numpy().astype(np.int32)
    config = sampling.SamplingConfig(max_new_tokens=MAX_NEW, greedy=True, stop_tokens=tok.special_ids.eos,
                                     pad_id=tok.special_ids.pad)
    native = Prompts(jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)), jnp.asarray(slot), (),
                     jnp.asarray([grid], jnp.int32))
    rollout = sampling.sample_groups(model, native, jax.random.key(0), config, group_size=1)
    ours = np.asarray(rollout.tokens[0, : int(rollout.lengths[0])])
    assert ours[-1] == tok.special_ids.im_end and len(ours) < MAX_NEW  # stopped at <|im_end|>
    np.testing.assert_array_equal(generated.numpy(), ours)  # transformers stopped at the same token
    parsed = regions.parse_answer(tok.decode(ours, skip_special_tokens=True))
    assert parsed.valid
