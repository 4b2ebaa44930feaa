"""One GRPO iteration, geor_jax vs TRL's GRPOTrainer, on the DESIGN.md bench config (CPU).

An iteration = rollout of B prompts x G samples (one 224x224 image and ~40
text tokens each, exactly ``--completions`` new tokens at temperature 0.9: no
early stop), reward of the decoded text with ``geor_jax.rewards``, group
advantages, reference log-probs (beta 0.04) and one AdamW update (lr 1e-6,
clip 1.0, clip eps 0.2, token-mean loss). Both sides load the same random
~36M-parameter Qwen2.5-VL from one HF checkpoint directory, tokenize with the
same offline BPE tokenizer (``build_demo_tokenizer``: Qwen's special tokens),
see the same prompts and images, and run with ``--threads`` threads, each in
its own subprocess so peak RSS is per side. Prints samples/s (median
iteration after warm-up), peak RSS and the ratio, plus where geor_jax's
iteration goes and how close its train and decode steps are to this
machine's matmul peak / memory bandwidth.

    PYTHONPATH=. python tools/bench/grpo_iteration.py                       # both sides, B=2, G=8, 64 tokens
    PYTHONPATH=. python tools/bench/grpo_iteration.py --side=jax --groups=4,8,16 --completions=64,128,256  # RESULT lines
    PYTHONPATH=. python tools/bench/grpo_iteration.py --plot=tools/bench/grpo_scaling.png --results=/tmp/scaling.json
    PYTHONPATH=. python tools/bench/grpo_iteration.py --side=lora   # geor_jax LoRA r=16 vs full fine-tuning

TRL needs a processor for a vision model. transformers' ``Qwen2_5_VLProcessor``
insists on a video processor, whose class needs torchvision (broken next to
the CPU torch here), so the TRL side uses ``ImageOnlyQwenProcessor``: the
same processor class with the video slot removed from its constructor, built
from the slow PIL ``Qwen2VLImageProcessorPil`` and the tokenizer, with a
minimal chat template that geor_jax's side renders its prompts with too (``prompts.prompt_template``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
from absl import app, flags
from flax import nnx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import common  # noqa: E402
from geor_jax import grpo, lora, rewards, sampling, train_state  # noqa: E402
from geor_jax.data import patches, prompts as prompts_lib, tokenizer as tokenizer_lib  # noqa: E402
from geor_jax.models import qwen2_5_vl as qvl  # noqa: E402
from geor_jax.rollout import Prompts  # noqa: E402
from geor_jax.run import cli  # noqa: E402

INSTRUCTION = "Where was this photo taken? Name the country, the state, the city and the coordinates as (latitude, longitude)."
TEMPERATURE, BETA, LEARNING_RATE = 0.9, 0.04, 1e-6
IMAGE_SIDE = 224
# The chat template (Jinja) both sides render prompts with: a one-image user turn and no system turn; the
# processor (and geor_jax.data.prompts.prompt_template) expand the single <|image_pad|> to the image's token count.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)



def _positive_ints(values: list[str]) -> bool:
    return all(v.isdigit() and int(v) >= 1 for v in values)


flags.DEFINE_enum("side", "both", ["both", "jax", "trl", "prepare", "lora"],
                  "both: prepare, then each side in its own process and the table; jax / trl: one side in this "
                  "process, one RESULT line per measurement; prepare: only write --workdir")
flags.DEFINE_string("workdir", None, "checkpoint + tokenizer + images (default: a temp dir)")
flags.DEFINE_integer("lora_rank", 0, "jax side: train LoRA adapters of this rank on the text decoder's projections "
                     "(0: full fine-tuning); --side=lora compares this rank (16 if 0) with full fine-tuning",
                     lower_bound=0)
flags.DEFINE_integer("threads", 2, "CPU threads of each side", lower_bound=1)
flags.DEFINE_integer("prompts", 2, "B prompts per iteration", lower_bound=1)
flags.DEFINE_list("groups", ["8"], "G values, comma-separated")
flags.DEFINE_list("completions", ["64"], "completion lengths, comma-separated")
flags.DEFINE_integer("iterations", 5, "timed iterations (after warm-up)", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "untimed iterations first", lower_bound=0)
flags.DEFINE_integer("trl_iterations", 4, "timed TRL iterations (after warm-up)", lower_bound=1)
flags.DEFINE_bool("remat", False, "geor_jax: rematerialise blocks (TRL uses gradient checkpointing)")
flags.DEFINE_bool("no_shared_prompt", False, "geor_jax: score each completion with its own copy of the prompt")
flags.DEFINE_integer("trl_gradient_checkpointing", 1, "TRL's default is on")
flags.DEFINE_string("results", None, "append every measured row to this JSON-lines file")
flags.DEFINE_string("plot", None, "draw the scaling plot (PNG) from --results")
flags.DEFINE_bool("explain_recompiles", False, "log JAX cache misses (jax side)")
flags.DEFINE_bool("plot_only", False, "only redraw --plot from --results")
flags.register_validator("groups", _positive_ints, "comma-separated positive integers")
flags.register_validator("completions", _positive_ints, "comma-separated positive integers")
FLAGS = flags.FLAGS


# ---------------------------------------------------------------------------------------------------------------
# Shared inputs: checkpoint, tokenizer, images, ground truth.


def prepare(workdir: str, num_examples: int = 8) -> None:
    """Write the tokenizer, the random bench checkpoint and the example images/targets into ``workdir``."""
    if os.path.exists(os.path.join(workdir, "examples.json")):
        return
    tokenizer = tokenizer_lib.build_demo_tokenizer(workdir)
    ids = tokenizer.special_ids
    model = common.bench_hf_model(ids.model_config_overrides(), bos_token_id=ids.im_start, eos_token_id=ids.im_end)
    model.generation_config.pad_token_id = ids.pad
    model.save_pretrained(workdir)
    rng = np.random.RandomState(0)
    examples = []
    for i in range(num_examples):
        path = os.path.join(workdir, f"image_{i}.png")
        PIL.Image.fromarray((rng.rand(IMAGE_SIDE, IMAGE_SIDE, 3) * 255).astype(np.uint8)).save(path)
        examples.append({"image": path, "lat": float(rng.uniform(-60, 70)), "lon": float(rng.uniform(-180, 180))})
    with open(os.path.join(workdir, "examples.json"), "w") as f:
        json.dump(examples, f)


def load_examples(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "examples.json")) as f:
        return json.load(f)


def rss_and_load() -> dict:
    return {"peak_rss_gb": common.peak_rss_bytes() / 1e9, "rss_gb": common.current_rss_bytes() / 1e9,
            "load": common.load_average()}


# ---------------------------------------------------------------------------------------------------------------
# geor_jax side.


def run_jax(args, workdir: str, group: int, completion: int) -> dict:
    if args.explain_recompiles:
        jax.config.update("jax_explain_cache_misses", True)
    tokenizer = tokenizer_lib.load_tokenizer(workdir)
    tokenizer.hf.chat_template = CHAT_TEMPLATE  # the TRL side's template
    examples = load_examples(workdir)
    images = [np.asarray(PIL.Image.open(e["image"]).convert("RGB")) for e in examples]
    model = qvl.load_hf_checkpoint(workdir, remat=args.remat)
    optimizer = train_state.OptimizerConfig(learning_rate=LEARNING_RATE).make()
    config = grpo.GRPOConfig(group_size=group, beta=BETA, temperature=TEMPERATURE, max_new_tokens=completion,
                             shared_prompt=not args.no_shared_prompt)
    lora_config = lora.LoRAConfig()  # rank 0: full fine-tuning
    if args.lora_rank:
        lora_config = lora.LoRAConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank)
        lora.add_adapters(model, lora_config, jax.random.key(1))
    trainable = lora.trainable_filter(lora_config)
    graphdef, state = train_state.create_train_state(model, optimizer, jax.random.key(0), trainable=trainable)
    kept = grpo.reference_params(state.params, config, trainable)  # with LoRA: nothing (the base, adapters off)
    reference = grpo.make_reference_logprobs(graphdef, config)
    step = grpo.make_grpo_step(graphdef, optimizer, config)
    compiled = {"update": [], "reference": []}  # XLA compilations of each, through jax.monitoring
    listeners = [common.compile_listener(compiled["update"], "step"),
                 common.compile_listener(compiled["reference"], "reference")]
    template = prompts_lib.prompt_template(tokenizer, prompts_lib.PromptConfig(instruction=INSTRUCTION))
    pad = tokenizer.special_ids.pad
    sampling_config = config.sampling_config(stop_tokens=(), pad_id=pad)  # no stop: every completion is full length

    def make_prompts(batch: list[int]) -> tuple[Prompts, np.ndarray, np.ndarray]:
        """Host preprocessing, as the data pipeline does it: patches, chat prompt, tokens, left padding."""
        rows, pixels, grids = [], [], []
        for i in batch:
            values, grid = patches.image_to_patches(images[i])
            rows.append(template.ids(patches.num_image_tokens(grid)))
            pixels.append(values)
            grids.append(grid)
        width = max(map(len, rows))
        tokens = np.full((len(rows), width), pad, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for r, row in enumerate(rows):
            tokens[r, width - len(row):], mask[r, width - len(row):] = row, 1
        lat = np.repeat([examples[i]["lat"] for i in batch], group)
        lon = np.repeat([examples[i]["lon"] for i in batch], group)
        return Prompts(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(np.concatenate(pixels)), tuple(grids)), lat, lon

    phases: dict[str, list[float]] = {k: [] for k in ("prepare", "sample", "reward", "reference", "update")}
    holder = {"state": state}

    def iteration(index: int) -> dict:
        clock = time.perf_counter()
        marks = {}

        def mark(name):
            nonlocal clock
            now = time.perf_counter()
            marks[name] = now - clock
            clock = now

        batch = [(index * args.prompts + b) % len(examples) for b in range(args.prompts)]
        prompts, lat, lon = make_prompts(batch)
        mark("prepare")
        policy = nnx.merge(graphdef, holder["state"].params)
        rollout = sampling.sample_groups(policy, prompts, jax.random.key(index), sampling_config, group_size=group)
        texts = sampling.decode_completions(tokenizer, rollout)  # waits for the rollout
        mark("sample")
        scored = rewards.score_completions(texts, lat, lon)
        advantages, _ = grpo.group_advantages(scored.reward, group)
        rollout = rollout.replace(advantages=advantages)
        mark("reward")
        ref_params = grpo.with_reference(holder["state"].params, kept)
        rollout = rollout.replace(ref_logprobs=reference(ref_params, rollout).block_until_ready())
        mark("reference")
        holder["state"], metrics = step(holder["state"], rollout)
        jax.block_until_ready(metrics)
        mark("update")
        assert int(np.min(np.asarray(rollout.lengths))) == completion, "every completion must have the full length"
        marks["rollout"] = rollout
        return marks

    times = []
    last = None
    for index in range(args.warmup + args.iterations):
        start = time.perf_counter()
        marks = iteration(index)
        elapsed = time.perf_counter() - start
        if index >= args.warmup:
            times.append(elapsed)
            for name in phases:
                phases[name].append(marks[name])
        last = marks["rollout"]
    median = statistics.median(times)
    rows = args.prompts * group
    for listener in listeners:
        jax.monitoring.unregister_event_duration_listener(listener)
    compiles = {name: len(times) for name, times in compiled.items()}
    result = {"side": "jax", "compiles": compiles, "G": group, "completion": completion, "prompts": args.prompts, "prompt_len":
              int(last.prompts.tokens.shape[1]), "iteration_s": median, "times": times, "samples_per_s": rows / median,
              "phases": {k: statistics.median(v) for k, v in phases.items()}, "remat": args.remat,
              "shared_prompt": not args.no_shared_prompt, "lora_rank": lora_config.rank,
              "trained_params": sum(x.size for x in jax.tree.leaves(state.split_params()[0])), **rss_and_load()}

    # How far from the hardware: FLOPs of the compiled update and of one decode step.
    peak, bandwidth = common.matmul_peak(), common.copy_bandwidth()
    update_flops = common.compiled_flops(step, holder["state"], last)
    reference_flops = common.compiled_flops(reference, grpo.with_reference(holder["state"].params, kept), last)
    prompt_len = last.prompts.tokens.shape[1]

    def prefill():  # the prefill phase of a rollout, with its model merge and split
        policy = nnx.merge(graphdef, holder["state"].params)
        return jax.block_until_ready(sampling.prefill(*nnx.split(policy), last.prompts, group_size=group,
                                                      max_len=prompt_len + completion))

    prefill_s, _ = common.median_time(prefill, 3)
    decode_flops, decode_bytes = common.decode_step_cost(nnx.merge(graphdef, holder["state"].params), rows, prompt_len, completion)
    step_s = (result["phases"]["sample"] - prefill_s) / (completion - 1)
    bound_s = max(decode_flops / peak, decode_bytes / bandwidth)
    result.update(matmul_peak_gflops=peak / 1e9, bandwidth_gbs=bandwidth / 1e9, update_gflop=update_flops / 1e9,
                  update_fraction_of_peak=update_flops / result["phases"]["update"] / peak,
                  reference_gflop=reference_flops / 1e9,
                  reference_fraction_of_peak=reference_flops / result["phases"]["reference"] / peak,
                  prefill_s=prefill_s, decode_step_ms=1e3 * step_s, decode_bound_ms=1e3 * bound_s,
                  decode_flop_bound_ms=1e3 * decode_flops / peak, decode_byte_bound_ms=1e3 * decode_bytes / bandwidth)
    return result


# ---------------------------------------------------------------------------------------------------------------
# TRL side.


def image_only_processor(workdir: str):
    """A Qwen2.5-VL processor without the video processor (whose class needs torchvision)."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwenProcessor(Qwen2_5_VLProcessor):
        """Qwen2_5_VLProcessor whose constructor has no video slot, so ProcessorMixin neither asks for nor
        type-checks a video processor. Images and text behave as in the parent class."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)
            self.video_processor = None

    tokenizer = AutoTokenizer.from_pretrained(workdir)
    pixels = IMAGE_SIDE * IMAGE_SIDE
    image_processor = Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels)
    return ImageOnlyQwenProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def run_trl(args, workdir: str, group: int, completion: int) -> dict:
    import datasets  # the TRL side's (trl, datasets: the bench extra; torch) stay out of the geor_jax process
    import torch
    import transformers
    import trl

    torch.set_num_threads(args.threads)
    examples = load_examples(workdir)
    processor = image_only_processor(workdir)
    steps = args.warmup + args.trl_iterations
    rows = [{"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION}]}],
             "image": PIL.Image.open(e["image"]).convert("RGB"), "lat": e["lat"], "lon": e["lon"]} for e in examples]
    dataset = datasets.Dataset.from_list(rows)

    def geo_reward(completions, lat, lon, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return rewards.score_completions(texts, lat, lon).reward.tolist()

    config = trl.GRPOConfig(
        output_dir=os.path.join(workdir, "trl_out"), use_cpu=True, bf16=False, fp16=False, seed=0,
        per_device_train_batch_size=args.prompts * group, gradient_accumulation_steps=1, num_generations=group,
        max_completion_length=completion, temperature=TEMPERATURE, top_p=1.0, top_k=0, beta=BETA, epsilon=0.2,
        learning_rate=LEARNING_RATE, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
        loss_type="dapo", scale_rewards="group", num_iterations=1, max_steps=steps, logging_steps=1,
        save_strategy="no", report_to="none", dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=bool(args.trl_gradient_checkpointing), log_completions=False,
        generation_kwargs={"min_new_tokens": completion}, model_init_kwargs={"dtype": torch.float32},
    )
    stamps = []

    class StepTimer(transformers.TrainerCallback):
        def on_train_begin(self, *a, **k):
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer = trl.GRPOTrainer(model=workdir, reward_funcs=geo_reward, args=config, train_dataset=dataset,
                              processing_class=processor, callbacks=[StepTimer()])
    generation = []
    generate = trainer._generate_single_turn

    def timed_generate(*a, **k):
        start = time.perf_counter()
        out = generate(*a, **k)
        generation.append(time.perf_counter() - start)
        return out

    trainer._generate_single_turn = timed_generate
    trainer.train()
    times = [b - a for a, b in zip(stamps, stamps[1:])][args.warmup:]
    median = statistics.median(times)
    lengths = [h.get("completions/min_length") for h in trainer.state.log_history if "completions/min_length" in h]
    return {"side": "trl", "G": group, "completion": completion, "prompts": args.prompts, "iteration_s": median,
            "times": times, "samples_per_s": args.prompts * group / median,
            "generate_s": statistics.median(generation[args.warmup:]), "min_completion_length": min(lengths or [0]),
            "gradient_checkpointing": bool(args.trl_gradient_checkpointing), "trl": trl.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__, **rss_and_load()}


# ---------------------------------------------------------------------------------------------------------------
# Driver.


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))


def prepared_workdir(workdir: str | None) -> str:
    """``workdir`` (default: a new temp dir) holding the shared inputs; a separate process writes any that are
    missing (so torch stays out of this one's memory)."""
    workdir = workdir or tempfile.mkdtemp(prefix="grpo_bench_")
    if os.path.exists(os.path.join(workdir, "examples.json")):
        return workdir
    subprocess.run([sys.executable, os.path.abspath(__file__), "--side=prepare", f"--workdir={workdir}"], check=True,
                   env=child_env())
    return workdir


def child(args, side: str, workdir: str, group: int, completion: int, lora_rank: int = 0) -> dict:
    """Run one side in a fresh process (its own peak RSS, its own thread settings)."""
    command = [sys.executable, os.path.abspath(__file__), f"--side={side}", f"--workdir={workdir}",
               f"--threads={args.threads}", f"--prompts={args.prompts}", f"--groups={group}",
               f"--completions={completion}", f"--iterations={args.iterations}", f"--warmup={args.warmup}",
               f"--trl_iterations={args.trl_iterations}", f"--trl_gradient_checkpointing={args.trl_gradient_checkpointing}",
               f"--lora_rank={lora_rank}"]
    command += ["--remat"] if args.remat else []
    command += ["--no_shared_prompt"] if args.no_shared_prompt else []
    output = subprocess.run(command, env=child_env(), check=True, capture_output=True, text=True)
    lines = [line for line in output.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{side} run printed no result:\n{output.stdout[-3000:]}\n{output.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def print_table(results: list[dict]) -> None:
    by_key = {}
    for r in results:
        by_key.setdefault((r["G"], r["completion"]), {})[r["side"]] = r
    print("\n| G | completion | geor_jax s/iter | geor_jax samples/s | geor_jax peak RSS GB | TRL s/iter | "
          "TRL samples/s | TRL peak RSS GB | ratio (samples/s) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (group, completion), sides in sorted(by_key.items()):
        j, t = sides.get("jax"), sides.get("trl")
        cells = [str(group), str(completion)]
        for r in (j, t):
            cells += [f"{r['iteration_s']:.2f}", f"{r['samples_per_s']:.2f}", f"{r['peak_rss_gb']:.2f}"] if r else ["-"] * 3
        cells.append(f"{t['iteration_s'] / j['iteration_s']:.2f}x" if j and t else "-")
        print("| " + " | ".join(cells) + " |")
    for r in results:
        if r["side"] == "jax":
            p = r["phases"]
            print(f"\ngeor_jax G={r['G']} T={r['completion']} (prompt {r['prompt_len']} tokens, load {r['load']}): "
                  + ", ".join(f"{k} {v:.3f} s" for k, v in p.items())
                  + f"; prefill {r['prefill_s']:.3f} s, decode step {r['decode_step_ms']:.1f} ms vs bound "
                  f"{r['decode_bound_ms']:.1f} ms (FLOPs {r['decode_flop_bound_ms']:.1f}, bytes {r['decode_byte_bound_ms']:.1f});"
                  f" update {r['update_gflop']:.0f} GFLOP at {r['update_fraction_of_peak']:.0%} of the "
                  f"{r['matmul_peak_gflops']:.0f} GFLOP/s fp32 matmul peak, reference {r['reference_gflop']:.0f} GFLOP "
                  f"at {r['reference_fraction_of_peak']:.0%}; copy bandwidth {r['bandwidth_gbs']:.1f} GB/s; "
                  f"times {[round(t, 2) for t in r['times']]}")
        else:
            print(f"\nTRL {r['trl']} G={r['G']} T={r['completion']} (load {r['load']}): generate {r['generate_s']:.2f} s "
                  f"of {r['iteration_s']:.2f} s; min completion length {r['min_completion_length']}; times "
                  f"{[round(t, 2) for t in r['times']]}")


def print_lora_table(full: dict, adapted: dict) -> None:
    """geor_jax full fine-tuning vs LoRA on the same model, rollouts and config: each phase and the ratio."""
    print(f"\n| phase (median s) | full fine-tuning ({full['trained_params'] / 1e6:.1f} M trained) | LoRA r="
          f"{adapted['lora_rank']} ({adapted['trained_params'] / 1e6:.2f} M trained) | LoRA / full |")
    print("| --- | ---: | ---: | ---: |")
    for name in ("sample", "reference", "update"):
        f, a = full["phases"][name], adapted["phases"][name]
        print(f"| {name} | {f:.3f} | {a:.3f} | {a / f:.2f}x |")
    f, a = full["iteration_s"], adapted["iteration_s"]
    print(f"| iteration | {f:.3f} | {a:.3f} | {a / f:.2f}x |")
    print(f"peak RSS GB: full {full['peak_rss_gb']:.2f}, LoRA {adapted['peak_rss_gb']:.2f}; load {full['load']} / "
          f"{adapted['load']}; update GFLOP: full {full['update_gflop']:.1f}, LoRA {adapted['update_gflop']:.1f}")


def plot(results_path: str, out_path: str) -> None:
    """Iteration time and its phases against G (at the shortest completion) and completion length (at G=8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(results_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    jax_rows = [r for r in rows if r["side"] == "jax"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    shortest = min(r["completion"] for r in jax_rows)
    for ax, key, fixed, label in ((axes[0], "G", ("completion", shortest), "group size G"),
                                  (axes[1], "completion", ("G", 8), "completion tokens")):
        sel = sorted((r for r in jax_rows if r[fixed[0]] == fixed[1]), key=lambda r: r[key])
        xs = [r[key] for r in sel]
        ax.plot(xs, [r["iteration_s"] for r in sel], "o-k", label="geor_jax iteration")
        ax.plot(xs, [r["prefill_s"] for r in sel], "s--", label="prefill (shared per group)")
        ax.plot(xs, [r["phases"]["sample"] - r["prefill_s"] for r in sel], "^--", label="decode loop")
        ax.plot(xs, [r["phases"]["reference"] for r in sel], "v--", label="reference log-probs")
        ax.plot(xs, [r["phases"]["update"] for r in sel], "d--", label="update (fwd+bwd+AdamW)")
        trl_sel = sorted((r for r in rows if r["side"] == "trl" and r[fixed[0]] == fixed[1]), key=lambda r: r[key])
        if trl_sel:
            ax.plot([r[key] for r in trl_sel], [r["iteration_s"] for r in trl_sel], "x-r", label="TRL GRPOTrainer iteration")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(label + (f" ({fixed[0]} = {fixed[1]})"))
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"One GRPO iteration, B = {jax_rows[0]['prompts']} prompts, bench config (36M), 2-core CPU")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    print(f"wrote {out_path}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    args = FLAGS
    if args.plot_only:
        if not (args.results and args.plot):
            raise app.UsageError("--plot_only needs --results and --plot")
        return plot(args.results, args.plot)
    groups, completions = [int(g) for g in args.groups], [int(c) for c in args.completions]
    if args.side in ("both", "trl") and importlib.util.find_spec("trl") is None:
        raise app.UsageError(f"--side={args.side} needs TRL (pip install -e '.[bench]'); --side=jax runs geor_jax alone")
    if args.side == "prepare":
        if not args.workdir:
            raise app.UsageError("--side=prepare needs --workdir")
        return prepare(args.workdir)
    if args.side in ("jax", "trl"):
        common.thread_flags(args.threads)
        workdir = prepared_workdir(args.workdir)
        run = run_jax if args.side == "jax" else run_trl
        for group in groups:
            for completion in completions:
                print("RESULT " + json.dumps(run(args, workdir, group, completion)), flush=True)
        return
    workdir = prepared_workdir(args.workdir)
    if args.side == "lora":
        rank = args.lora_rank or 16
        for group in groups:
            for completion in completions:
                full = child(args, "jax", workdir, group, completion, lora_rank=0)
                adapted = child(args, "jax", workdir, group, completion, lora_rank=rank)
                print(f"G={group} T={completion}, {args.prompts} prompts, {args.threads} threads:")
                print_lora_table(full, adapted)
                print("RESULT " + json.dumps({"full": full, "lora": adapted}), flush=True)
        return
    results = []
    for group in groups:
        for completion in completions:
            for side in ("jax", "trl"):
                result = child(args, side, workdir, group, completion)
                print(f"{side} G={group} T={completion}: {result['iteration_s']:.2f} s/iteration, "
                      f"{result['samples_per_s']:.2f} samples/s, peak RSS {result['peak_rss_gb']:.2f} GB, "
                      f"load {result['load']}", flush=True)
                results.append(result)
                if args.results:
                    with open(args.results, "a") as f:
                        f.write(json.dumps(result) + "\n")
    print_table(results)
    if args.plot and args.results:
        plot(args.results, args.plot)


if __name__ == "__main__":
    cli.main(main)
