"""SFT on the demo world's CoR records, through the real pipeline: the loss falls."""

import jax
import numpy as np

import tiny_policy
from geor_jax import sft, train_state
from geor_jax.data import demo_world, pipeline
from geor_jax.data import tokenizer as tokenizer_lib


def test_sft_loss_falls_on_demo_records(tmp_path):
    tok = tokenizer_lib.build_demo_tokenizer(tmp_path / "tok", vocab_size=1024,
                                             texts=tokenizer_lib.demo_corpus(num_places=1500))
    records_dir, _ = demo_world.build_demo_records(str(tmp_path / "data"), num_images=32, seed=1, height=56, width=56)
    config = pipeline.PipelineConfig(records_dir=records_dir, tokenizer_dir=str(tmp_path / "tok"),
                                     global_batch_size=4, buckets=((56, 56),), max_prompt_len=128,
                                     max_target_len=64, seed=0)
    ids = {k: v for k, v in tok.special_ids.model_config_overrides().items()
           if k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    model = tiny_policy.model(model_config=tiny_policy.config(vocab_size=tok.vocab_size, **ids))
    optimizer = train_state.OptimizerConfig(learning_rate=1e-2, warmup_steps=2, total_steps=40).make()
    graphdef, state = train_state.create_train_state(model, optimizer, jax.random.key(0))
    step = sft.make_sft_step(graphdef, optimizer)

    losses = []
    for batch, _ in zip(pipeline.make_iterator(config), range(30)):
        a = batch.arrays
        state, metrics = step(state, batch.prompts(), a["target_tokens"], a["target_mask"])
        losses.append(float(metrics["loss"]))
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    # From ~ln(1024) = 6.9 nats per token at random towards the CoR answers' structure.
    assert first > 5.0 and last < 0.6 * first, losses  # measured: 7.3 -> 2.7
