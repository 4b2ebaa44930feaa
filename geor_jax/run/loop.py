"""The training run behind ``launch/train.py``: SFT or GRPO steps, checkpoints, resume, logs.

``run(config, workdir)`` trains one stage of a resolved ``RunConfig``
(``geor_jax.run.config.resolve``): ``config.stage`` = "sft" (Chain of Region
targets) or "grpo" (sample -> Haversine reward -> update), resuming from the
newest intact checkpoint in ``workdir``. The parts come from
``geor_jax.run.build``; this module only connects them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geor_jax import checkpoint, config_fields, evaluate, grpo, regions, rewards, sampling, sft, sharding, train_state
from geor_jax.data import pipeline
from geor_jax.data import tokenizer as tokenizer_lib
from geor_jax.models import qwen2_5_vl as qvl
from geor_jax.run import build
from geor_jax.run.logger import IntervalTimer, MetricsLogger


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long a stage runs, how often it logs and checkpoints, and whether it exports its policy."""

    num_steps: int = config_fields.field(2000, config_fields.at_least(1))
    log_every: int = config_fields.field(10, config_fields.at_least(1))
    checkpoint_every: int = config_fields.field(100, config_fields.at_least(1))
    keep_checkpoints: int = config_fields.field(3, config_fields.at_least(1))
    export_hf: bool = True

    def __post_init__(self):
        config_fields.check(self)


@dataclasses.dataclass
class Run:
    """Everything a stage's loop needs, built once."""

    config: object  # run.config.RunConfig
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
    reference: object = None  # GRPO with beta != 0: the params the run started from (the KL reference)
    reference_digest: str | None = None  # its ``reference_fingerprint``, saved with every checkpoint

    def model(self) -> qvl.Qwen2VL:
        """The current policy as a module (shares the state's buffers)."""
        return nnx.merge(self.graphdef, self.state.params)


def reference_fingerprint(params) -> str:
    """A short digest of the KL reference's checksums, saved with every GRPO checkpoint."""
    digest = hashlib.sha256(json.dumps(checkpoint.state_checksums(params), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def setup(config, workdir: str) -> Run:
    """Mesh, tokenizer, model, optimizer, state (resumed if a checkpoint exists), data, logger.

    Multi-host runs call ``sharding.initialize_distributed`` before this.
    """
    os.makedirs(workdir, exist_ok=True)
    mesh = config.mesh.make()
    tokenizer = tokenizer_lib.load_tokenizer(config.data.tokenizer_dir)
    model = build.build_model(config.model, tokenizer, mesh, config.seed)
    optimizer = build.optimizer(config.optimizer, config.train.num_steps)
    graphdef, state = train_state.create_train_state(model, optimizer, jax.random.key(config.seed), mesh)
    del model
    t = config.train
    checkpointer = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=t.checkpoint_every,
                                           keep=t.keep_checkpoints)
    fresh = state  # the run's starting policy: model.init_from, or the seeded random init
    restored = checkpointer.restore_latest(jax.eval_shape(lambda: state))
    for damaged in checkpointer.set_aside:
        print(f"checkpoint step {damaged.step} is damaged ({damaged.reason}); moved to {damaged.path}", flush=True)
    start_step, data_state, saved = 0, None, {}
    if restored is not None:
        start_step, state, saved = restored
        data_state = saved["iterator"].encode()
        print(f"resumed from checkpoint at step {start_step}", flush=True)
    reference = digest = None
    if config.stage == "grpo" and config.grpo.beta != 0:
        # The KL reference is always the starting policy, rebuilt from its source on every
        # (re)start and checked against the fingerprint saved with the checkpoints. After a
        # restore the fresh params are free to serve as it; at step 0 it must be a copy (the
        # step donates the state's buffers).
        reference = fresh.params if restored is not None else grpo.reference_params(fresh.params, config.grpo)
        digest = reference_fingerprint(reference)
        if saved.get("reference", digest) != digest:
            source = config.model.init_from or f"the random init of seed {config.seed}"
            raise config_fields.ConfigError(
                "--config.model.init_from", f"{source} is not the policy this run started from (its weights "
                "changed since step 0), so the KL reference would change; restore it or use a new workdir")
    del fresh
    iterator = pipeline.make_iterator(build.train_pipeline(config.data), mesh, state=data_state)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config_fields.section(config).to_json(indent=2))
    return Run(config, workdir, mesh, tokenizer, graphdef, state, optimizer, iterator, checkpointer,
               MetricsLogger(workdir, t.num_steps, start_step), start_step, reference, digest)


def run(config, workdir: str) -> dict[str, float]:
    """Train ``config.stage`` for ``config.train.num_steps`` steps; returns the last eval metrics.

    Writes to ``workdir``: ``checkpoints/``, ``tensorboard/``, ``config.json``,
    ``metrics.jsonl`` (train and eval logs) and, at the end, the policy as a
    HF checkpoint with its tokenizer, image processor settings and
    generation config in ``hf/``.
    """
    r = setup(config, workdir)
    loop = _sft_loop if config.stage == "sft" else _grpo_loop
    with jax.set_mesh(r.mesh):
        eval_metrics = loop(r)
    r.checkpointer.close()
    if config.train.export_hf:  # a self-contained checkpoint: weights, tokenizer, processor, generation config
        checkpoint.export_hf(r.graphdef, r.state.params, os.path.join(workdir, "hf"))
        checkpoint.export_processor(os.path.join(workdir, "hf"), r.tokenizer, pipeline.patch_config(config.data))
        checkpoint.export_generation_config(os.path.join(workdir, "hf"), r.tokenizer)
    r.logger.close()
    return eval_metrics


def _save(r: Run, step: int, force: bool = False) -> None:
    data = {"iterator": r.iterator.get_state().decode()}
    if r.reference is not None:
        data["reference"] = r.reference_digest
    r.checkpointer.save(step, r.state, data, force=force)


def _maybe_evaluate(r: Run, step: int, last: bool) -> dict[str, float]:
    e = r.config.eval
    if not e.records_dir or not (last or (e.every_steps and step % e.every_steps == 0)):
        return {}
    data = build.eval_pipeline(r.config.data, e.records_dir, e.split, e.batch_size)
    metrics, _, _ = evaluate.evaluate_policy(r.model(), r.tokenizer, data, e, r.mesh)
    r.logger.log(step, metrics, prefix="eval")
    return metrics


def _sft_loop(r: Run) -> dict[str, float]:
    step_fn = sft.make_sft_step(r.graphdef, r.optimizer, r.config.sft)
    num_steps, eval_metrics, timer = r.config.train.num_steps, {}, IntervalTimer()
    for step in range(r.start_step + 1, num_steps + 1):
        batch = next(r.iterator)
        a = batch.arrays
        r.state, metrics = step_fn(r.state, batch.prompts(), a["target_tokens"], a["target_mask"])
        timer.count(float(sharding.to_host(a["prompt_mask"]).sum() + sharding.to_host(a["target_mask"]).sum()))
        if step % r.config.train.log_every == 0 or step == num_steps:
            metrics = {k: float(v) for k, v in metrics.items()}  # waits for the step: timing is honest
            seconds, tokens = timer.lap()
            r.logger.log(step, {**metrics, "step_time_s": seconds, "tokens_per_s": tokens / seconds})
        _save(r, step, force=step == num_steps)
        eval_metrics = _maybe_evaluate(r, step, step == num_steps) or eval_metrics
    return eval_metrics


def true_regions(batch: pipeline.Batch, group_size: int) -> list[regions.Region]:
    """Each rollout row's true Chain of Region, from the records (all hosts' rows, group-major)."""
    h = {key: sharding.gather_strings(batch.host[key]) for key in ("country", "country_code", "state", "city")}
    truths = [regions.Region(country, code, state, city, distance_km=np.nan)
              for country, code, state, city in zip(h["country"], h["country_code"], h["state"], h["city"])]
    return [truth for truth in truths for _ in range(group_size)]


def score_rollout(tokenizer, rollout: sampling.Rollout, batch: pipeline.Batch, group_size: int,
                  config: rewards.RewardConfig) -> rewards.ScoredCompletions:
    """The reward of every completion against its own prompt's ground truth (row b*G + g: prompt b)."""
    texts = sampling.decode_completions(tokenizer, rollout)
    true_lat = np.repeat(sharding.to_host(batch.arrays["lat"]), group_size)
    true_lon = np.repeat(sharding.to_host(batch.arrays["lon"]), group_size)
    truths = true_regions(batch, group_size) if config.uses_levels else None
    return rewards.score_completions(texts, true_lat, true_lon, truths, config=config)


def _grpo_loop(r: Run) -> dict[str, float]:
    g, num_steps = r.config.grpo, r.config.train.num_steps
    sampling_config = g.sampling_config(stop_tokens=r.tokenizer.special_ids.eos, pad_id=r.tokenizer.special_ids.pad)
    step_fn = grpo.make_grpo_step(r.graphdef, r.optimizer, g)
    reference = grpo.make_reference_logprobs(r.graphdef, g)
    base_key = jax.random.wrap_key_data(np.asarray(r.state.rng))  # a copy: the step donates the state
    eval_metrics, timer = {}, IntervalTimer()
    for step in range(r.start_step + 1, num_steps + 1):
        batch = next(r.iterator)
        rollout = sampling.sample_groups(r.model(), batch.prompts(), jax.random.fold_in(base_key, step),
                                         sampling_config, group_size=g.group_size, mesh=r.mesh)
        scored = score_rollout(r.tokenizer, rollout, batch, g.group_size, r.config.reward)
        advantages, stats = grpo.group_advantages(jnp.asarray(scored.reward), g.group_size, g.advantage_scale)
        rollout = rollout.replace(advantages=advantages)
        if r.reference is not None:
            rollout = rollout.replace(ref_logprobs=reference(r.reference, rollout))
        for _ in range(g.num_passes):
            r.state, metrics = step_fn(r.state, rollout)
        timer.count(float(sharding.to_host(rollout.lengths).sum()))
        if step % r.config.train.log_every == 0 or step == num_steps:
            logged = {**{k: float(v) for k, v in metrics.items()}, **{k: float(v) for k, v in stats.items()}}
            seconds, generated = timer.lap()
            r.logger.log(step, {**logged, "valid_rate": float(scored.valid.mean()), "step_time_s": seconds,
                                "generated_tokens_per_s": generated / seconds})
        _save(r, step, force=step == num_steps)
        eval_metrics = _maybe_evaluate(r, step, step == num_steps) or eval_metrics
    return eval_metrics
