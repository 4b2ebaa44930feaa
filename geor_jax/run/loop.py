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

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geor_jax import (checkpoint, config_fields, evaluate, grpo, lora, paths, regions, rewards, sampling, sft, sharding,
                      train_state)
from geor_jax.data import pipeline
from geor_jax.data import tokenizer as tokenizer_lib
from geor_jax.models import qwen2_5_vl as qvl
from geor_jax.run import build, export, profiling
from geor_jax.run.logger import IntervalTimer, MetricsLogger


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long a stage runs, how often it logs and checkpoints, what it freezes, whether it exports its policy,
    which steps it profiles and where JAX's persistent compilation cache lives.

    freeze: towers that keep their weights in full fine-tuning (``lora.FREEZE_GROUPS``: "vision", "merger",
    "embeddings"); with LoRA every base weight is frozen anyway.
    profile_steps: ``first,last`` writes a JAX trace of those steps to ``<workdir>/profile``; () none.
    profile_python: the trace also records every Python call (JAX's Python tracer): for input-pipeline
    stalls; it slows the traced steps many times over (``run.profiling``).
    compilation_cache_dir: relative paths are under the workdir; "" turns the cache off.
    """

    num_steps: int = config_fields.field(2000, config_fields.at_least(1))
    log_every: int = config_fields.field(10, config_fields.at_least(1))
    checkpoint_every: int = config_fields.field(100, config_fields.at_least(1))
    keep_checkpoints: int = config_fields.field(3, config_fields.at_least(1))
    export_hf: bool = True
    freeze: tuple[str, ...] = config_fields.field((), config_fields.each(config_fields.one_of(*lora.FREEZE_GROUPS)))
    profile_steps: tuple[int, ...] = config_fields.field((), profiling.check_steps)
    profile_python: bool = False
    compilation_cache_dir: str = "compilation_cache"

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
    # LoRA or frozen towers: the ``reference_fingerprint`` of the parameters that do not train (which the
    # checkpoints leave out), saved with every checkpoint; None in full fine-tuning.
    frozen_digest: str | None = None

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
    paths.as_path(workdir).mkdir(parents=True, exist_ok=True)
    mesh = config.mesh.make()
    tokenizer = tokenizer_lib.load_tokenizer(config.data.tokenizer_dir)
    model = build.build_model(config.model, tokenizer, mesh, config.seed)
    trainable = build.adapt(model, config.lora, config.train.freeze, mesh, config.seed)
    optimizer = build.optimizer(config.optimizer, config.train.num_steps)
    graphdef, state = train_state.create_train_state(model, optimizer, jax.random.key(config.seed), mesh,
                                                     trainable=trainable)
    del model
    t = config.train
    checkpointer = checkpoint.Checkpointer(str(paths.as_path(workdir) / "checkpoints"), save_every=t.checkpoint_every,
                                           keep=t.keep_checkpoints)
    fresh = state  # the run's starting policy: model.init_from (+ lora.init_from), or the seeded random init
    # With LoRA or frozen towers, checkpoints hold only what trains: the frozen weights are rebuilt from their
    # source on every (re)start and checked against the fingerprint saved with the checkpoints.
    frozen = frozen_digest = None
    if trainable is not nnx.Param:
        frozen = state.split_params()[1]
        frozen_digest = reference_fingerprint(frozen)
    saved_state = state if frozen is None else state.trained_only()
    restored = checkpointer.restore_latest(jax.eval_shape(lambda: saved_state))
    for damaged in checkpointer.set_aside:
        print(f"checkpoint step {damaged.step} is damaged ({damaged.reason}); moved to {damaged.path}", flush=True)
    start_step, data_state, saved = 0, None, {}
    if restored is not None:
        start_step, state, saved = restored
        if frozen is not None:
            state = state.with_frozen(frozen)
        data_state = saved["iterator"].encode()
        print(f"resumed from checkpoint at step {start_step}", flush=True)
    if saved.get("frozen", frozen_digest) != frozen_digest:
        raise config_fields.ConfigError(
            "--config.model.init_from", f"{config.model.init_from or 'the random init'}: the frozen weights differ "
            "from those this run trained on; restore them or use a new workdir")
    reference = digest = None
    if config.stage == "grpo" and config.grpo.beta != 0:
        # The KL reference is always the starting policy with any adapters disabled, rebuilt from its source
        # on every (re)start and checked against the fingerprint saved with the checkpoints. Only the weights
        # that train need keeping apart (none with LoRA: the base is frozen); after a restore the fresh ones
        # are free to serve, at step 0 they must be a copy (the step donates the state's buffers).
        reference = grpo.reference_params(fresh.params, config.grpo, trainable, copy=restored is None)
        digest = reference_fingerprint(grpo.with_reference(fresh.params, reference) if frozen is not None
                                       else reference)
        if saved.get("reference", digest) != digest:
            source = config.model.init_from or f"the random init of seed {config.seed}"
            raise config_fields.ConfigError(
                "--config.model.init_from", f"{source} is not the policy this run started from (its weights "
                "changed since step 0), so the KL reference would change; restore it or use a new workdir")
    del fresh
    iterator = pipeline.make_iterator(build.train_pipeline(config.data), mesh, state=data_state)
    if jax.process_index() == 0:
        paths.write_atomic(paths.as_path(workdir) / "config.json", config_fields.section(config).to_json(indent=2))
    return Run(config, workdir, mesh, tokenizer, graphdef, state, optimizer, iterator, checkpointer,
               MetricsLogger(workdir, t.num_steps, start_step), start_step, reference, digest, frozen_digest)


def run(config, workdir: str) -> dict[str, float]:
    """Train ``config.stage`` for ``config.train.num_steps`` steps; returns the last eval metrics.

    Writes to ``workdir`` (local or a URL): ``checkpoints/``, ``tensorboard/``,
    ``config.json``, ``metrics.jsonl`` (train and eval logs), ``profile/`` if
    asked and, at the end, the policy as a HF checkpoint with its tokenizer,
    image processor settings and generation config in ``hf/``
    (``run.export``; with LoRA: adapters merged in, and the adapters alone in
    PEFT's format in ``adapter/``).
    """
    r = setup(config, workdir)
    loop = _sft_loop if config.stage == "sft" else _grpo_loop
    with jax.set_mesh(r.mesh):
        eval_metrics = loop(r)
    r.checkpointer.close()
    if config.train.export_hf:
        export.export_policy(r.graphdef, r.state.params, r.tokenizer, pipeline.patch_config(config.data),
                             str(paths.as_path(workdir) / "hf"), config.export, config.eval.max_new_tokens)
        if config.lora.rank:
            export.export_adapter(r.model(), str(paths.as_path(workdir) / "adapter"),
                                  base_model_name_or_path=config.model.init_from or None)
    r.logger.close()
    return eval_metrics


def _save(r: Run, step: int, force: bool = False) -> None:
    data = {"iterator": r.iterator.get_state().decode()}
    if r.reference is not None:
        data["reference"] = r.reference_digest
    if r.frozen_digest is not None:
        data["frozen"] = r.frozen_digest
    if r.checkpointer.is_due(step, force):
        r.logger.sync()  # the metrics up to this step are stored before its checkpoint exists
    r.checkpointer.save(step, r.state if r.frozen_digest is None else r.state.trained_only(), data, force=force)


def _maybe_evaluate(r: Run, step: int, last: bool) -> dict[str, float]:
    e = r.config.eval
    if not e.records_dir or not (last or (e.every_steps and step % e.every_steps == 0)):
        return {}
    data = build.eval_pipeline(r.config.data, e.records_dir, e.split, e.batch_size)
    metrics, _, _ = evaluate.evaluate_policy(r.model(), r.tokenizer, data, e, r.mesh)
    r.logger.log(step, metrics, prefix="eval")
    r.logger.sync()  # this step's checkpoint may already be stored: a resume would not evaluate it again
    return metrics


def _sft_loop(r: Run) -> dict[str, float]:
    step_fn = sft.make_sft_step(r.graphdef, r.optimizer, r.config.sft)
    num_steps, eval_metrics, timer = r.config.train.num_steps, {}, IntervalTimer()
    profiler = profiling.StepProfiler(r.config.train.profile_steps, r.workdir, r.config.train.profile_python)
    for step in range(r.start_step + 1, num_steps + 1):
        batch = next(r.iterator)
        a = batch.arrays
        profiler.before(step)
        r.state, metrics = step_fn(r.state, batch.prompts(), a["target_tokens"], a["target_mask"])
        profiler.after(step, metrics)
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
    profiler = profiling.StepProfiler(r.config.train.profile_steps, r.workdir, r.config.train.profile_python)
    for step in range(r.start_step + 1, num_steps + 1):
        batch = next(r.iterator)
        profiler.before(step)
        rollout = sampling.sample_groups(r.model(), batch.prompts(), jax.random.fold_in(base_key, step),
                                         sampling_config, group_size=g.group_size, mesh=r.mesh)
        scored = score_rollout(r.tokenizer, rollout, batch, g.group_size, r.config.reward)
        advantages, stats = grpo.group_advantages(jnp.asarray(scored.reward), g.group_size, g.advantage_scale)
        rollout = rollout.replace(advantages=advantages)
        if r.reference is not None:
            ref_params = r.reference if r.frozen_digest is None else grpo.with_reference(r.state.params, r.reference)
            rollout = rollout.replace(ref_logprobs=reference(ref_params, rollout))
        for _ in range(g.num_passes):
            r.state, metrics = step_fn(r.state, rollout)
        profiler.after(step, metrics)
        timer.count(float(sharding.to_host(rollout.lengths).sum()))
        if step % r.config.train.log_every == 0 or step == num_steps:
            logged = {**{k: float(v) for k, v in metrics.items()}, **{k: float(v) for k, v in stats.items()}}
            seconds, generated = timer.lap()
            r.logger.log(step, {**logged, "valid_rate": float(scored.valid.mean()), "step_time_s": seconds,
                                "generated_tokens_per_s": generated / seconds})
        _save(r, step, force=step == num_steps)
        eval_metrics = _maybe_evaluate(r, step, step == num_steps) or eval_metrics
    return eval_metrics
