"""The training run behind ``launch/train.py``: wires data, model, steps, checkpoints and logs.

``run(config, workdir)`` trains one stage, ``config.stage`` = "sft" (Chain of
Region targets) or "grpo" (sample -> Haversine reward -> update), resuming
from the newest checkpoint in ``workdir``. Everything it calls is a public
function of the library; this module only connects them. The config layout
is documented in ``configs/demo.py``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geor_jax import (checkpoint, evaluate, grpo, logprobs, regions, rewards, run_config, sampling, sft, sharding,
                      train_state)
from geor_jax.data import patches, pipeline, prompts
from geor_jax.data import tokenizer as tokenizer_lib
from geor_jax.models import qwen2_5_vl as qvl

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# --- Building blocks from the config -------------------------------------------------------------


def model_config(config, tokenizer: tokenizer_lib.Tokenizer) -> qvl.Qwen2VLConfig:
    """The model config of a random-init run: the config's dims and the tokenizer's vocabulary and ids."""
    ids = tokenizer.special_ids.model_config_overrides()
    text, vision = config.model.text, config.model.vision
    return qvl.Qwen2VLConfig(
        text=qvl.TextConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
            num_layers=text.num_layers, num_heads=text.num_heads, num_kv_heads=text.num_kv_heads,
            rope_theta=text.rope_theta, mrope_section=tuple(text.mrope_section),
            tie_word_embeddings=text.tie_word_embeddings,
        ),
        vision=qvl.VisionConfig(
            depth=vision.depth, hidden_size=vision.hidden_size, num_heads=vision.num_heads,
            intermediate_size=vision.intermediate_size, out_hidden_size=text.hidden_size,
            window_size=vision.window_size, fullatt_block_indexes=tuple(vision.fullatt_block_indexes),
        ),
        **{k: ids[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")},
    )


def build_model(config, tokenizer: tokenizer_lib.Tokenizer, mesh) -> qvl.Qwen2VL:
    """Load ``config.model.init_from`` (a HF checkpoint dir) or build a random model, sharded on ``mesh``.

    A loaded checkpoint must agree with the tokenizer on vocabulary size and
    image token id, or the prompts would not mean what the model learned.
    """
    kw = dict(dtype=DTYPES[config.model.dtype], param_dtype=DTYPES[config.model.param_dtype],
              remat=config.model.remat, scan_layers=config.model.scan_layers)
    if config.model.init_from:
        model = qvl.load_hf_checkpoint(config.model.init_from, mesh=mesh, **kw)
        ids = tokenizer.special_ids
        if model.config.text.vocab_size < tokenizer.vocab_size or model.config.image_token_id != ids.image_pad:
            raise ValueError(
                f"checkpoint {config.model.init_from} (vocab {model.config.text.vocab_size}, image token "
                f"{model.config.image_token_id}) does not match tokenizer {config.data.tokenizer_dir} "
                f"(vocab {tokenizer.vocab_size}, image token {ids.image_pad})"
            )
        return model
    cfg = model_config(config, tokenizer)
    return sharding.create_sharded_model(lambda: qvl.Qwen2VL(cfg, rngs=nnx.Rngs(config.seed), **kw), mesh)


def patch_config(config) -> patches.PatchConfig:
    """The image processor settings: ``data.tokenizer_dir``'s preprocessor_config.json (the checkpoint's),
    overridden by ``data.processor``'s non-zero fields (e.g. ``max_pixels``)."""
    overrides = {key: tuple(value) if isinstance(value, (list, tuple)) else value
                 for key, value in config.data.processor.items() if value}
    return patches.load_patch_config(config.data.tokenizer_dir, **overrides)


def pipeline_config(config, records_dir: str, split: str, batch_size: int, train: bool,
                    num_records: int | None = None) -> pipeline.PipelineConfig:
    """Pipeline settings for training (shuffled, endless) or evaluation (ordered, one pass over
    ``num_records`` records or all, padded)."""
    data = config.data
    return pipeline.PipelineConfig(
        records_dir=records_dir, tokenizer_dir=data.tokenizer_dir, split=split, global_batch_size=batch_size,
        resize=data.resize, num_shapes=data.num_shapes, sort_window=data.sort_window,
        shape_sample=data.shape_sample, buckets=tuple(tuple(b) for b in data.buckets),
        max_prompt_len=data.max_prompt_len, max_target_len=data.max_target_len, seed=data.seed, shuffle=train,
        num_epochs=None if train else 1, drop_remainder=train, num_records=num_records,
        worker_count=data.worker_count if train else 0, patch=patch_config(config),
        prompt=prompts.PromptConfig(instruction=data.instruction) if data.instruction else prompts.PromptConfig(),
    )


def reward_config(config) -> rewards.RewardConfig:
    """The reward of ``config.reward`` (breakpoints only for the piecewise "geor" reward)."""
    r = config.reward
    kwargs = (("breakpoints_km", tuple(r.breakpoints_km)),) if r.distance == "geor" else tuple(r.distance_kwargs.items())
    return rewards.RewardConfig(distance=r.distance, distance_kwargs=kwargs, combine=r.combine,
                                level_weights=tuple(r.level_weights))


def batch_prompts(batch: pipeline.Batch) -> logprobs.Prompts:
    """The prompts of a pipeline batch: one image each, with per-row grids (native) or the bucket's grid."""
    a = batch.arrays
    if batch.grid_thw is None:
        return logprobs.Prompts(a["prompt_tokens"], a["prompt_mask"], a["pixel_values"], (), a["image_grid_thw"])
    return logprobs.Prompts(a["prompt_tokens"], a["prompt_mask"], a["pixel_values"], batch.image_grid_thw())


# --- Logging ----------------------------------------------------------------------------------------


class MetricsLogger:
    """Step metrics to stdout (one progress line), TensorBoard event files and
    ``metrics.jsonl`` (one JSON line per log; process 0 only)."""

    def __init__(self, workdir: str, total_steps: int):
        self.total_steps = total_steps
        self.writer = None
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def log(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        """Write scalars; print ``step N/T key value ...``."""
        if self.writer is None:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps({"split": prefix, "step": step, **metrics}) + "\n")
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"[{prefix}] step {step}/{self.total_steps} {shown}", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --- The run ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """Everything a stage's loop needs, built once."""

    config: object
    workdir: str
    mesh: object
    tokenizer: tokenizer_lib.Tokenizer
    graphdef: nnx.GraphDef
    state: train_state.TrainState
    optimizer: object
    iterator: pipeline.GeoBatchIterator
    checkpointer: checkpoint.Checkpointer
    logger: MetricsLogger
    start_step: int

    def model(self) -> qvl.Qwen2VL:
        """The current policy as a module (shares the state's buffers)."""
        return nnx.merge(self.graphdef, self.state.params)


def setup(config, workdir: str) -> Run:
    """Mesh, tokenizer, model, optimizer, state (resumed if a checkpoint exists), data, logger.

    Multi-host runs call ``sharding.initialize_distributed`` before this.
    """
    os.makedirs(workdir, exist_ok=True)
    run_config.check(config, jax.device_count())
    mesh = sharding.make_mesh(**config.mesh)
    tokenizer = tokenizer_lib.load_tokenizer(config.data.tokenizer_dir)
    model = build_model(config, tokenizer, mesh)
    o = config.optimizer
    optimizer = train_state.OptimizerConfig(
        learning_rate=o.learning_rate, warmup_steps=o.warmup_steps, total_steps=max(config.train.num_steps, o.warmup_steps + 1),
        final_learning_rate_fraction=o.final_learning_rate_fraction, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2,
        max_grad_norm=o.max_grad_norm,
    ).make()
    graphdef, state = train_state.create_train_state(model, optimizer, jax.random.key(config.seed), mesh)
    del model
    checkpointer = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=config.train.checkpoint_every,
                                           keep=config.train.keep_checkpoints)
    restored = checkpointer.restore_latest(jax.eval_shape(lambda: state))
    start_step, data_state = 0, None
    if restored is not None:
        start_step, state, saved = restored
        data_state = saved["iterator"].encode()
        logging.info("resumed from step %d", start_step)
        print(f"resumed from checkpoint at step {start_step}", flush=True)
    batch_size = config.data.global_batch_size
    iterator = pipeline.make_iterator(pipeline_config(config, config.data.records_dir, config.data.split, batch_size, True),
                                      mesh, state=data_state)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    return Run(config, workdir, mesh, tokenizer, graphdef, state, optimizer, iterator, checkpointer,
               MetricsLogger(workdir, config.train.num_steps), start_step)


def run(config, workdir: str) -> dict[str, float]:
    """Train ``config.stage`` for ``config.train.num_steps`` steps; returns the last eval metrics.

    Writes to ``workdir``: ``checkpoints/``, ``tensorboard/``, ``config.json``,
    ``metrics.jsonl`` (train and eval logs) and, at the end, the policy as a
    HF checkpoint with its tokenizer in ``hf/``.
    """
    if config.stage not in ("sft", "grpo"):
        raise ValueError(f"config.stage={config.stage!r}: choose 'sft' or 'grpo'")
    r = setup(config, workdir)
    loop = _sft_loop if config.stage == "sft" else _grpo_loop
    with jax.set_mesh(r.mesh):
        eval_metrics = loop(r)
    r.checkpointer.close()
    if config.train.export_hf:  # a self-contained checkpoint: weights, tokenizer, processor, generation config
        checkpoint.export_hf(r.graphdef, r.state.params, os.path.join(workdir, "hf"), tokenizer=r.tokenizer,
                             patch_config=patch_config(config))
    r.logger.close()
    return eval_metrics


class _IntervalTimer:
    """Mean seconds per step and tokens since the last lap (steps run asynchronously,
    so one step's wall time is meaningless; an interval's is not)."""

    def __init__(self):
        self.start, self.steps, self.tokens = time.perf_counter(), 0, 0.0

    def count(self, tokens: float) -> None:
        self.steps, self.tokens = self.steps + 1, self.tokens + tokens

    def lap(self) -> tuple[float, float]:
        """(seconds per step, tokens per step) over the interval; starts the next one."""
        now = time.perf_counter()
        seconds, tokens = (now - self.start) / max(self.steps, 1), self.tokens / max(self.steps, 1)
        self.start, self.steps, self.tokens = now, 0, 0.0
        return seconds, tokens


def _save(r: Run, step: int, force: bool = False) -> None:
    r.checkpointer.save(step, r.state, {"iterator": r.iterator.get_state().decode()}, force=force)


def _maybe_evaluate(r: Run, step: int, last: bool) -> dict[str, float]:
    every = r.config.eval.every_steps
    if not r.config.eval.records_dir or not (last or (every and step % every == 0)):
        return {}
    metrics, _, _ = evaluate_policy(r.config, r.model(), r.tokenizer, r.mesh)
    r.logger.log(step, metrics, prefix="eval")
    return metrics


def _sft_loop(r: Run) -> dict[str, float]:
    step_fn = sft.make_sft_step(r.graphdef, r.optimizer, r.config.sft.num_micro_batches,
                                r.config.sft.logits_chunk_size)
    eval_metrics = {}
    timer = _IntervalTimer()
    for step in range(r.start_step + 1, r.config.train.num_steps + 1):
        batch = next(r.iterator)
        a = batch.arrays
        r.state, metrics = step_fn(r.state, batch_prompts(batch), a["target_tokens"], a["target_mask"])
        timer.count(float(sharding.to_host(a["attention_mask"]).sum()))
        if step % r.config.train.log_every == 0 or step == r.config.train.num_steps:
            metrics = {k: float(v) for k, v in metrics.items()}  # waits for the step: timing is honest
            seconds, tokens = timer.lap()
            r.logger.log(step, {**metrics, "step_time_s": seconds, "tokens_per_s": tokens / seconds})
        _save(r, step, force=step == r.config.train.num_steps)
        eval_metrics = _maybe_evaluate(r, step, step == r.config.train.num_steps) or eval_metrics
    return eval_metrics


def _grpo_loop(r: Run) -> dict[str, float]:
    config = r.config
    g = config.grpo
    grpo_config = grpo.GRPOConfig(
        group_size=g.group_size, beta=g.beta, clip_eps=g.clip_eps, clip_eps_high=g.clip_eps_high or None,
        aggregation=g.aggregation, advantage_scale=g.advantage_scale, temperature=g.temperature,
        shared_prompt=g.shared_prompt, num_micro_batches=g.num_micro_batches, logits_chunk_size=g.logits_chunk_size,
    )
    sampling_config = sampling.SamplingConfig(
        max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
        stop_tokens=r.tokenizer.special_ids.eos, pad_id=r.tokenizer.special_ids.pad,
    )
    rewarding = reward_config(config)
    step_fn = grpo.make_grpo_step(r.graphdef, r.optimizer, grpo_config)
    reference = grpo.make_reference_logprobs(r.graphdef, grpo_config)
    ref_params = grpo.reference_params(r.state.params, grpo_config)
    base_key = jax.random.wrap_key_data(np.asarray(r.state.rng))  # a copy: the step donates the state
    eval_metrics = {}
    timer = _IntervalTimer()
    for step in range(r.start_step + 1, config.train.num_steps + 1):
        batch = next(r.iterator)
        prompts_ = batch_prompts(batch)
        rollout = sampling.sample_groups(
            r.model(), prompts_.tokens, prompts_.mask, jax.random.fold_in(base_key, step), sampling_config,
            group_size=g.group_size, pixel_values=prompts_.pixel_values, image_grid_thw=prompts_.image_grid_thw,
            mesh=r.mesh,
        )
        texts = sampling.decode_completions(r.tokenizer, rollout)
        true_lat = np.repeat(sharding.to_host(batch.arrays["lat"]), g.group_size)
        true_lon = np.repeat(sharding.to_host(batch.arrays["lon"]), g.group_size)
        truths = regions.chain_of_region(np.stack([true_lat, true_lon], 1)) if rewarding.uses_levels else None
        scored = rewards.score_completions(texts, true_lat, true_lon, truths, config=rewarding)
        advantages, stats = grpo.group_advantages(jnp.asarray(scored.reward), g.group_size, g.advantage_scale)
        ref_logp = reference(ref_params, prompts_, rollout.tokens, rollout.mask) if ref_params is not None else None
        batch_rollout = grpo.Rollout(prompts_, rollout.tokens, rollout.mask, rollout.logprobs, advantages, ref_logp)
        for _ in range(g.num_passes):
            r.state, metrics = step_fn(r.state, batch_rollout)
        timer.count(float(sharding.to_host(rollout.lengths).sum()))
        if step % config.train.log_every == 0 or step == config.train.num_steps:
            logged = {**{k: float(v) for k, v in metrics.items()}, **{k: float(v) for k, v in stats.items()}}
            seconds, generated = timer.lap()
            r.logger.log(step, {**logged, "valid_rate": float(scored.valid.mean()), "step_time_s": seconds,
                                "generated_tokens_per_s": generated / seconds})
        _save(r, step, force=step == config.train.num_steps)
        eval_metrics = _maybe_evaluate(r, step, step == config.train.num_steps) or eval_metrics
    return eval_metrics


def load_policy(config, hf_dir: str, mesh) -> tuple[qvl.Qwen2VL, tokenizer_lib.Tokenizer]:
    """A HF checkpoint directory as ``config`` builds models (dtypes, layout, sharding on ``mesh``),
    with the config's tokenizer, checked against each other as in ``build_model``."""
    tokenizer = tokenizer_lib.load_tokenizer(config.data.tokenizer_dir)
    config = config.copy_and_resolve_references()
    config.model.init_from = hf_dir
    return build_model(config, tokenizer, mesh), tokenizer


def evaluate_policy(config, model: qvl.Qwen2VL, tokenizer: tokenizer_lib.Tokenizer, mesh,
                    records_dir: str | None = None, split: str | None = None):
    """Greedy answers on the eval records (``config.eval``, or ``records_dir`` / ``split``), scored.

    Returns (metrics, per-example results) of ``evaluate.evaluate_answers``
    and the records' ids (None on multi-host runs).
    """
    e = config.eval
    data = pipeline_config(config, records_dir or e.records_dir, split or e.split, e.batch_size, train=False,
                           num_records=e.num_examples or None)
    with jax.set_mesh(mesh):
        answers = evaluate.generate_answers(model, tokenizer, pipeline.make_iterator(data, mesh), e.max_new_tokens,
                                            mesh=mesh, max_examples=e.num_examples)
    metrics, per_example = evaluate.evaluate_answers(answers["texts"], answers["lat"], answers["lon"],
                                                     answers["regions"])
    return metrics, per_example, answers["ids"]
