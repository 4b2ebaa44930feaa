"""Per-device memory of the SFT and GRPO steps for real Qwen2.5-VL sizes, without weights.

Builds the model abstractly (``nnx.eval_shape``: no parameter is allocated),
gives every parameter, optimizer moment and input a ``jax.ShapeDtypeStruct``
with its ``NamedSharding`` on a mesh of fake CPU devices, lowers and compiles
the library's own jitted functions ahead of time and prints what XLA's
buffer assignment says each device needs (``compiled.memory_analysis()``):

- SFT: ``geor_jax.sft.make_sft_step``.
- GRPO, one iteration: the sampler's prefill and decode loop
  (``sampling.prefill``, ``sampling.decode``), the reference log-probs
  (``grpo.make_reference_logprobs``) and the update (``grpo.make_grpo_step``).
  The train state and the frozen reference params stay resident for the
  whole iteration; each phase adds its own inputs, outputs and temporaries,
  so the iteration's peak is resident + the largest phase's extra.

Examples (each compiles on this machine's CPU; see README "Memory plan")::

    python tools/plan_memory.py --model=7b --task=sft --mesh=1,8,1 --batch=64 --seq=512
    python tools/plan_memory.py --model=7b --task=grpo --mesh=1,8,1 --prompts=8 --group_size=8
    python tools/plan_memory.py --model=3b --task=grpo --mesh=1,16,1 --prompts=16 --group_size=4
    python tools/plan_memory.py --model=7b --layers=2 --vision_depth=2 --task=all    # reduced: CI-sized

Caveats: the numbers are XLA *CPU*'s buffer assignment of the SPMD-
partitioned program; TPU and GPU compilers fuse and schedule differently
(typically needing less temporary memory; CPU may also keep f32 copies of
bf16 matmul operands), so treat the temporaries as an estimate with
+-25% headroom and the resident state (params, moments, reference) as exact.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run as a script

from geor_jax import grpo, logprobs, lora, sampling, sft, train_state  # noqa: E402
from geor_jax import sharding as sharding_lib  # noqa: E402
from geor_jax.data import patches  # noqa: E402
from geor_jax.models import qwen2_5_vl as qvl  # noqa: E402
from geor_jax.rollout import Prompts, Rollout  # noqa: E402
from geor_jax.run import cli  # noqa: E402

GB = 1e9
# LLVM optimisation off: halves CPU compile time and leaves buffer assignment (the numbers) unchanged.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# Qwen2.5-VL-7B-Instruct / -3B-Instruct (their config.json), as dataclasses.
VISION_7B = qvl.VisionConfig(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, out_hidden_size=3584,
                             window_size=112, fullatt_block_indexes=(7, 15, 23, 31))
QWEN2_5_VL_7B = qvl.Qwen2VLConfig(
    text=qvl.TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
                        num_kv_heads=4, rope_theta=1e6, mrope_section=(16, 24, 24), tie_word_embeddings=False),
    vision=VISION_7B,
)
QWEN2_5_VL_3B = qvl.Qwen2VLConfig(
    text=qvl.TextConfig(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16,
                        num_kv_heads=2, rope_theta=1e6, mrope_section=(16, 24, 24), tie_word_embeddings=True),
    vision=dataclasses.replace(VISION_7B, out_hidden_size=2048),
)
# The DESIGN.md bench config (~36M parameters) and a tiny one for tests.
BENCH = qvl.Qwen2VLConfig(
    text=qvl.TextConfig(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_layers=8, num_heads=8,
                        num_kv_heads=2, rope_theta=1e6, mrope_section=(8, 12, 12)),
    vision=qvl.VisionConfig(depth=4, hidden_size=256, num_heads=4, intermediate_size=704, out_hidden_size=512,
                            window_size=112, fullatt_block_indexes=(3,)),
    image_token_id=8190, video_token_id=8191, vision_start_token_id=8188, vision_end_token_id=8189,
)
TINY = qvl.Qwen2VLConfig(
    text=qvl.TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        num_kv_heads=2, mrope_section=(2, 3, 3)),
    vision=qvl.VisionConfig(depth=1, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64,
                            window_size=112, fullatt_block_indexes=(0,)),
    image_token_id=500, video_token_id=501, vision_start_token_id=502, vision_end_token_id=503,
)
MODELS = {"7b": QWEN2_5_VL_7B, "3b": QWEN2_5_VL_3B, "bench": BENCH, "tiny": TINY}


def _ints(text: str) -> tuple[int, ...]:
    """Comma-separated integers, or () if any is not one."""
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        return ()


def mesh_shape(text: str) -> tuple[int, int, int]:
    """``--mesh`` as (data, fsdp, tensor) sizes."""
    sizes = _ints(text)
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"--mesh needs three positive sizes data,fsdp,tensor, got {text!r}")
    return sizes


def depths(text: str) -> tuple[int, int]:
    """``--extrapolate`` as two depths A < B."""
    values = _ints(text)
    if len(values) != 2 or not 1 <= values[0] < values[1]:
        raise ValueError(f"--extrapolate needs two depths 1 <= A < B, got {text!r}")
    return values


def _parses(parse):
    """A flag validator: ``parse(value)`` must not raise (None passes)."""
    def check(value):
        try:
            value is None or parse(value)
        except (ValueError, TypeError) as error:
            raise flags.ValidationError(str(error)) from None
        return True
    return check


flags.DEFINE_string("model", "7b", "3b, 7b, bench (the ~36M DESIGN.md config), tiny, or a config.json path")
flags.DEFINE_integer("layers", None, "override the text decoder depth (reduced runs)", lower_bound=1)
flags.DEFINE_integer("vision_depth", None, "override the vision tower depth (reduced runs)", lower_bound=1)
flags.DEFINE_enum("task", "all", ["sft", "grpo", "all"], "which steps to plan")
flags.DEFINE_string("mesh", "1,8,1", "data,fsdp,tensor sizes")
flags.DEFINE_float("hbm_gb", None, "device memory to compare against (default: none)")
flags.DEFINE_string("dtype", "bfloat16", "compute dtype")
flags.DEFINE_string("param_dtype", "float32", "stored (master) parameter dtype")
flags.DEFINE_bool("no_remat", False, "do not rematerialise the blocks")
flags.DEFINE_bool("no_scan_layers", False, "unrolled layers instead of one scanned block")
flags.DEFINE_integer("micro_batches", 1, "gradient accumulation steps (SFT and GRPO)", lower_bound=1)
flags.DEFINE_integer("image_side", 448, "square image side in pixels (multiple of 28)", lower_bound=1)
flags.DEFINE_integer("max_pixels", None, "native sizing (data.resize='native') with this processor max_pixels: every "
                     "image in a full patch slot, the largest any image gets (replaces --image_side)", lower_bound=1)
flags.DEFINE_integer("logits_chunk_size", 128, "target / completion positions per LM head chunk (SFT and GRPO; the "
                     "configs' default); 0: all positions' logits at once", lower_bound=0)
# SFT
flags.DEFINE_integer("batch", 64, "SFT global batch (sequences)", lower_bound=1)
flags.DEFINE_integer("seq", 512, "SFT sequence length: prompt (incl. image) + target", lower_bound=1)
flags.DEFINE_integer("target_len", 64, "SFT target tokens (the rest of --seq is prompt)", lower_bound=1)
# GRPO
flags.DEFINE_integer("prompts", 8, "GRPO prompts per step (B); rows = B * G", lower_bound=1)
flags.DEFINE_integer("group_size", 8, "GRPO samples per prompt (G)", lower_bound=1)
flags.DEFINE_integer("prompt_len", 300, "GRPO prompt tokens incl. the image block", lower_bound=1)
flags.DEFINE_integer("completion_len", 256, "GRPO completion tokens", lower_bound=1)
flags.DEFINE_bool("no_shared_prompt", False, "score each completion with its own copy of the prompt")
flags.DEFINE_string("ref_dtype", None, "reference params dtype (default: the param dtype)")
flags.DEFINE_bool("no_sampler", False, "skip the rollout phases")
flags.DEFINE_integer("lora_rank", 0, "LoRA rank on the text decoder's projections (0: full fine-tuning); only the "
                     "adapters train and have AdamW moments, and the GRPO reference is the base (no copy)",
                     lower_bound=0)
flags.DEFINE_string("extrapolate", None, "A,B: compile at text/vision depths A and B (three reduced models) and "
                    "extrapolate every phase linearly to the full depth; e.g. 2,4. Full-depth compiles of 7B take "
                    "> 30 min on CPU")
flags.register_validator("model", lambda name: name in MODELS or os.path.exists(name),
                         f"one of {sorted(MODELS)} or an existing config.json path")
flags.register_validator("mesh", _parses(mesh_shape))
flags.register_validator("extrapolate", _parses(depths))
for _name in ("dtype", "param_dtype", "ref_dtype"):
    flags.register_validator(_name, _parses(jnp.dtype))
FLAGS = flags.FLAGS


def model_config(name: str, layers: int | None = None, vision_depth: int | None = None) -> qvl.Qwen2VLConfig:
    """A named config (or a HF config.json path), optionally with fewer layers."""
    config = MODELS[name] if name in MODELS else qvl.load_config(os.path.dirname(name) if name.endswith(".json") else name)
    if layers is not None:
        config = dataclasses.replace(config, text=dataclasses.replace(config.text, num_layers=layers))
    if vision_depth is not None:
        full = tuple(i for i in config.vision.fullatt_block_indexes if i < vision_depth) or (vision_depth - 1,)
        config = dataclasses.replace(
            config, vision=dataclasses.replace(config.vision, depth=vision_depth, fullatt_block_indexes=full))
    return config


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def count_params(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def abstract(shape, dtype, mesh, axes=None) -> jax.ShapeDtypeStruct:
    """A ShapeDtypeStruct sharded by logical axes (``("batch", None, ...)`` by default)."""
    axes = axes if axes is not None else ("batch",) + (None,) * (len(shape) - 1) if shape else ()
    spec = sharding_lib.logical_to_spec(axes, shape, mesh) if shape else PartitionSpec()
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def with_out_shardings(compiled, mesh) -> object:
    """The compiled function's outputs as sharded ShapeDtypeStructs (to chain phases); outputs XLA put
    on one device (scalars) become replicated over the mesh."""
    def spec(o):
        sharding = o.sharding if isinstance(o.sharding, NamedSharding) else NamedSharding(mesh, PartitionSpec())
        return jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=sharding)

    return jax.tree.map(spec, compiled.out_info)


def mirror_param_shardings(opt_state, params, replicated: NamedSharding):
    """Optimizer-state ShapeDtypeStructs sharded like the parameter they mirror (AdamW's mu / nu end in the
    parameter's own key path); everything else (step counts) replicated."""
    by_path = {jax.tree_util.keystr(path): leaf.sharding for path, leaf in jax.tree_util.tree_leaves_with_path(params)}

    def place(path, leaf):
        name = jax.tree_util.keystr(path)
        matches = [p for p in by_path if name.endswith(p)]
        sharding = by_path[max(matches, key=len)] if matches and leaf.shape else replicated
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    return jax.tree_util.tree_map_with_path(place, opt_state)


@dataclasses.dataclass
class Phase:
    """One compiled function's per-device memory (bytes), from XLA's memory analysis."""

    name: str
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    resident_arguments: int  # of ``arguments``, bytes that stay resident across phases (train state, reference)
    compile_s: float

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries

    @property
    def extra(self) -> int:
        """What this phase needs on top of the resident state."""
        return self.peak - self.resident_arguments


def compile_phase(name: str, fn, *args, resident_arguments: int = 0, **kwargs) -> tuple[Phase, object]:
    start = time.perf_counter()
    compiled = fn.lower(*args, **kwargs).compile(compiler_options=FAST_COMPILE)
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    phase = Phase(name, stats.argument_size_in_bytes, stats.output_size_in_bytes, stats.alias_size_in_bytes,
                  stats.temp_size_in_bytes, resident_arguments, seconds)
    return phase, compiled


@dataclasses.dataclass(frozen=True)
class Images:
    """One image per prompt: a square bucket's static ``grid``, or (native sizing) a ``slot`` of patches."""

    grid: tuple[int, int, int] | None = None
    slot: int = 0

    @property
    def patches(self) -> int:
        return self.slot or math.prod(self.grid)

    def describe(self, merge_unit: int) -> str:
        kind = f"native, slot of {self.slot} patches" if self.slot else f"grid {self.grid}"
        return f"{kind} = {self.patches // merge_unit} image tokens"


def image_inputs(args, config: qvl.Qwen2VLConfig) -> Images:
    """--image_side's square bucket, or --max_pixels' largest native image (a full slot)."""
    vision = config.vision
    if args.max_pixels:
        try:
            return Images(slot=patches.PatchConfig(patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                                                   max_pixels=args.max_pixels).max_patches)
        except ValueError as error:
            raise app.UsageError(f"--max_pixels {args.max_pixels}: {error}") from None
    side, unit = args.image_side, vision.patch_size * vision.spatial_merge_size
    if side % unit:
        raise app.UsageError(f"--image_side {side} must be a multiple of {unit}")
    return Images(grid=(1, side // vision.patch_size, side // vision.patch_size))


def prompt_len_error(prompt_len: int, images: Images, config) -> str | None:
    """Why a prompt of ``prompt_len`` tokens cannot hold the image block and a little text (None if it can)."""
    image_tokens = images.patches // config.vision.merge_unit
    if prompt_len < image_tokens + 3:
        return f"prompt length {prompt_len} cannot hold the image's {image_tokens} tokens + 3"
    return None


def abstract_prompts(config, mesh, batch: int, prompt_len: int, images: Images) -> Prompts:
    if error := prompt_len_error(prompt_len, images, config):
        raise ValueError(error)
    tokens = abstract((batch, prompt_len), jnp.int32, mesh)
    if images.slot:  # one image per row: (B, slot, patch_dim) and per-row grids as data
        return Prompts(tokens=tokens, mask=tokens,
                       pixel_values=abstract((batch, images.slot, config.vision.patch_dim), jnp.float32, mesh),
                       grids=(), row_grids=abstract((batch, 3), jnp.int32, mesh))
    return Prompts(tokens=tokens, mask=tokens,
                   pixel_values=abstract((batch * images.patches, config.vision.patch_dim), jnp.float32, mesh),
                   grids=(images.grid,) * batch)


class Plan:
    """Abstract model, train state and reference params on a mesh.

    With ``lora_rank``, adapters (float32) sit on the text decoder's projections, the optimizer state covers
    them alone, and the KL reference keeps no weights of its own (``grpo.reference_params``): the reference
    phase reads the live params with the adapters disabled.
    """

    def __init__(self, config, mesh, *, dtype, param_dtype, remat, scan_layers, ref_dtype=None,
                 learning_rate: float = 1e-6, lora_rank: int = 0):
        self.config, self.mesh = config, mesh

        def build():
            model = qvl.Qwen2VL(config, dtype=dtype, param_dtype=param_dtype, remat=remat, scan_layers=scan_layers,
                                rngs=nnx.Rngs(0))
            if lora_rank:
                lora.add_adapters(model, lora.LoRAConfig(rank=lora_rank, alpha=2.0 * lora_rank), jax.random.key(0))
            return model

        self.graphdef, params = nnx.split(nnx.eval_shape(build), nnx.Param)
        shardings = sharding_lib.state_shardings(params, mesh)
        self.params = jax.tree.map(lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), params, shardings)
        self.optimizer = train_state.OptimizerConfig(learning_rate=learning_rate).make()
        replicated = NamedSharding(mesh, PartitionSpec())
        trainable = lora.trainable_filter(lora.LoRAConfig(rank=lora_rank))
        trained, _ = nnx.split_state(self.params, trainable, ...)
        self.state = train_state.TrainState(
            params=self.params,
            opt_state=mirror_param_shardings(jax.eval_shape(self.optimizer.init, trained), trained, replicated),
            step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
            rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated),
            skipped_updates=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
            trainable=trainable,
        )
        ref_dtype = ref_dtype or param_dtype
        kept = grpo.reference_params(self.params, grpo.GRPOConfig(beta=0.04), trainable, copy=False)
        kept = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, ref_dtype, sharding=p.sharding), kept)
        self.ref_params = grpo.with_reference(self.params, kept)  # what the reference phase reads
        self.n_params = count_params(self.params)
        self.n_trained = count_params(trained)
        self.param_bytes = per_device_bytes(self.params)
        self.state_bytes = per_device_bytes(self.state)
        self.ref_bytes = per_device_bytes(kept)  # resident on top of the train state: 0 with LoRA
        self.ref_read_bytes = per_device_bytes(self.ref_params)


def plan_sft(plan: Plan, *, batch: int, seq: int, target_len: int, images: Images, micro_batches: int,
             logits_chunk_size: int = logprobs.DEFAULT_LOGITS_CHUNK_SIZE) -> list[Phase]:
    mesh, config = plan.mesh, plan.config
    step = sft.make_sft_step(plan.graphdef, plan.optimizer, sft.SFTConfig(num_micro_batches=micro_batches,
                                                                         logits_chunk_size=logits_chunk_size))
    prompts = abstract_prompts(config, mesh, batch, seq - target_len, images)
    targets = abstract((batch, target_len), jnp.int32, mesh)
    phase, _ = compile_phase("sft step", step, plan.state, prompts, targets, targets, resident_arguments=plan.state_bytes)
    return [phase]


def plan_grpo(plan: Plan, *, prompts: int, group_size: int, prompt_len: int, completion_len: int, images: Images,
              micro_batches: int, shared_prompt: bool, sampler: bool = True, update: bool = True,
              logits_chunk_size: int = logprobs.DEFAULT_LOGITS_CHUNK_SIZE) -> list[Phase]:
    mesh, config = plan.mesh, plan.config
    rows = prompts * group_size
    grpo_config = grpo.GRPOConfig(group_size=group_size, beta=0.04, shared_prompt=shared_prompt,
                                  num_micro_batches=micro_batches, logits_chunk_size=logits_chunk_size)
    batch_prompts = abstract_prompts(config, mesh, prompts, prompt_len, images)
    phases = []
    if sampler:
        # The sampler reads the policy's params (part of the resident train state).
        prefill, compiled = compile_phase(
            "rollout prefill", sampling.prefill, plan.graphdef, plan.params, batch_prompts, group_size=group_size,
            max_len=prompt_len + completion_len, mesh=mesh, resident_arguments=plan.param_bytes)
        cache, logits = with_out_shardings(compiled, mesh)
        key = jax.eval_shape(lambda: jax.random.key(0))
        sampling_config = sampling.SamplingConfig(max_new_tokens=completion_len, temperature=0.9,
                                                  suppress_tokens=(config.image_token_id, config.video_token_id))
        decode, _ = compile_phase("rollout decode", sampling.decode, plan.graphdef, plan.params, cache, logits, key,
                                  config=sampling_config, mesh=mesh, resident_arguments=plan.param_bytes)
        phases += [prefill, decode]
    completions = abstract((rows, completion_len), jnp.int32, mesh)
    per_token = abstract((rows, completion_len), jnp.float32, mesh)
    # The sampler's rollout, then scored: as the GRPO loop passes it to the reference and the step.
    rollout = Rollout(prompts=batch_prompts, tokens=completions, mask=completions, logprobs=per_token)
    reference = grpo.make_reference_logprobs(plan.graphdef, grpo_config)
    ref_phase, _ = compile_phase("reference logprobs", reference, plan.ref_params, rollout,
                                 resident_arguments=plan.ref_read_bytes)
    phases.append(ref_phase)
    if update:
        rollout = rollout.replace(advantages=abstract((rows,), jnp.float32, mesh), ref_logprobs=per_token)
        step = grpo.make_grpo_step(plan.graphdef, plan.optimizer, grpo_config)
        phases.append(compile_phase("grpo step", step, plan.state, rollout, resident_arguments=plan.state_bytes)[0])
    return phases


def report(title: str, plan: Plan, phases: list[Phase], resident: int, hbm_gb: float | None) -> dict:
    """Print one table; returns the numbers (bytes per device)."""
    largest = max(phases, key=lambda p: p.extra)
    peak = resident + largest.extra
    unit, scale = ("GB", GB) if peak >= GB else ("MB", 1e6)
    print(f"\n## {title}")
    print(f"| phase | arguments {unit} | outputs {unit} | aliased {unit} | temporaries {unit} | phase peak {unit} | "
          f"extra over resident {unit} | compile s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in phases:
        print(f"| {p.name} | {p.arguments / scale:.2f} | {p.outputs / scale:.2f} | {p.aliased / scale:.2f} | "
              f"{p.temporaries / scale:.2f} | {p.peak / scale:.2f} | {p.extra / scale:.2f} | {p.compile_s:.0f} |")
    verdict = ""
    if hbm_gb:
        verdict = f" -> {'fits' if peak < 0.9 * hbm_gb * GB else 'does NOT fit'} in {hbm_gb:.0f} GB (90% usable)"
    print(f"resident {resident / scale:.2f} {unit} + largest phase extra ({largest.name}) {largest.extra / scale:.2f} "
          f"{unit} = peak {peak / scale:.2f} {unit} per device{verdict}", flush=True)
    return {"resident": resident, "peak": peak, "phases": {p.name: dataclasses.asdict(p) | {"peak": p.peak} for p in phases}}


def make_plan(args, config, mesh) -> Plan:
    """The abstract model and states of ``config`` as the flags ``args`` set them."""
    return Plan(config, mesh, dtype=jnp.dtype(args.dtype), param_dtype=jnp.dtype(args.param_dtype),
                remat=not args.no_remat, scan_layers=not args.no_scan_layers,
                ref_dtype=args.ref_dtype and jnp.dtype(args.ref_dtype), lora_rank=args.lora_rank)


def run_phases(args, config, mesh, images: Images) -> tuple[Plan, dict[str, list[Phase]]]:
    """Build the plan and compile the requested tasks' phases for one model config."""
    plan = make_plan(args, config, mesh)
    tasks = {}
    with jax.set_mesh(mesh):  # as the run loop runs them: the model's activation constraints read this mesh
        if args.task in ("sft", "all"):
            tasks["sft"] = plan_sft(plan, batch=args.batch, seq=args.seq, target_len=args.target_len, images=images,
                                    micro_batches=args.micro_batches, logits_chunk_size=args.logits_chunk_size)
        if args.task in ("grpo", "all"):
            tasks["grpo"] = plan_grpo(plan, prompts=args.prompts, group_size=args.group_size,
                                      prompt_len=args.prompt_len, completion_len=args.completion_len, images=images,
                                      micro_batches=args.micro_batches, shared_prompt=not args.no_shared_prompt,
                                      logits_chunk_size=args.logits_chunk_size, sampler=not args.no_sampler)
    return plan, tasks


def extrapolate_phases(args, config, mesh, images: Images, text_and_vision_depths: tuple[int, int]) -> dict[str, list[Phase]]:
    """Per-device bytes of the full-depth model from three reduced-depth compiles.

    Every byte count is affine in the number of text layers L and vision blocks D (parameters, their
    gradients and moments, and the activations remat keeps per layer all scale with depth; one layer's
    transient working set does not), so (L=a, D=a), (L=b, D=a) and (L=a, D=b) fix it.
    """
    a, b = text_and_vision_depths
    runs = {}
    for key, (layers, vision) in {"00": (a, a), "10": (b, a), "01": (a, b)}.items():
        reduced = model_config(args.model, layers, vision)
        runs[key] = run_phases(args, reduced, mesh, images)[1]
        print(f"  compiled text layers {layers}, vision depth {vision}", flush=True)
    extra_text, extra_vision = config.text.num_layers - a, config.vision.depth - a
    out = {}
    for task, base_phases in runs["00"].items():
        out[task] = []
        for i, base in enumerate(base_phases):
            text, vision = runs["10"][task][i], runs["01"][task][i]

            def field(name):
                f0 = getattr(base, name)
                slope_text = (getattr(text, name) - f0) / (b - a)
                slope_vision = (getattr(vision, name) - f0) / (b - a)
                return int(round(f0 + slope_text * extra_text + slope_vision * extra_vision))

            print(f"  {task} / {base.name}: temporaries {base.temporaries / GB:.2f} GB at depth {a}/{a}, "
                  f"+{(text.temporaries - base.temporaries) / (b - a) / GB:.3f} GB per text layer, "
                  f"+{(vision.temporaries - base.temporaries) / (b - a) / GB:.3f} GB per vision block", flush=True)
            out[task].append(Phase(f"{base.name} (extrapolated)", field("arguments"), field("outputs"), field("aliased"),
                                   field("temporaries"), 0, base.compile_s + text.compile_s + vision.compile_s))
    return out


def check_prompt_lengths(args, config, images: Images) -> None:
    """Fail up front, naming the flags, if a requested task's prompt cannot hold the image."""
    lengths = {"sft": ("--seq - --target_len", args.seq - args.target_len), "grpo": ("--prompt_len", args.prompt_len)}
    for task, (names, length) in lengths.items():
        if args.task in (task, "all") and (error := prompt_len_error(length, images, config)):
            raise app.UsageError(f"{names}: {error} ({image_flag(args)})")


def image_flag(args) -> str:
    return f"--max_pixels {args.max_pixels}" if args.max_pixels else f"--image_side {args.image_side}"


def plan_memory(args) -> dict:
    """Compile, print the tables and return the numbers (bytes per device) for the flags ``args``."""
    data, fsdp, tensor = mesh_shape(args.mesh)
    # Fake CPU devices: set before JAX starts its backend (importing JAX does not start it).
    if "JAX_PLATFORMS" not in os.environ:
        jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", data * fsdp * tensor)
    config = model_config(args.model, args.layers, args.vision_depth)
    images = image_inputs(args, config)
    check_prompt_lengths(args, config, images)
    devices = jax.devices()[: data * fsdp * tensor]
    mesh = sharding_lib.make_mesh(data, fsdp, tensor, devices=devices)
    if args.extrapolate:
        plan = make_plan(args, config, mesh)
    else:
        plan, tasks = run_phases(args, config, mesh, images)
    print(f"model {args.model} (text layers {config.text.num_layers}, vision depth {config.vision.depth}): "
          f"{plan.n_params / 1e9:.3f} B params; mesh data={data} fsdp={fsdp} tensor={tensor} ({len(devices)} devices); "
          f"compute {args.dtype}, params {args.param_dtype}, remat {not args.no_remat}, scan_layers {not args.no_scan_layers}, "
          f"micro-batches {args.micro_batches}, logits chunk {args.logits_chunk_size or 'off'}, "
          f"{f'LoRA r={args.lora_rank} ({plan.n_trained / 1e6:.1f} M trained)' if args.lora_rank else 'full FT'}; "
          f"image {image_flag(args)}: {images.describe(config.vision.merge_unit)}")
    print(f"per device: params {plan.param_bytes / 1e6:.1f} MB, train state (params + AdamW moments of the trained "
          f"ones) {plan.state_bytes / 1e6:.1f} MB, reference params (own copy) {plan.ref_bytes / 1e6:.1f} MB", flush=True)
    if args.extrapolate:
        tasks = extrapolate_phases(args, config, mesh, images, depths(args.extrapolate))
    resident_of = {"sft": plan.state_bytes, "grpo": plan.state_bytes + plan.ref_bytes}
    for phases in tasks.values():  # what each phase keeps resident, from the full-size plan (exact)
        for p in phases:
            p.resident_arguments = (plan.state_bytes if p.name.startswith(("sft step", "grpo step"))
                                    else plan.ref_read_bytes if p.name.startswith("reference") else plan.param_bytes)
    results = {"n_params": plan.n_params, "n_trained": plan.n_trained, "param_bytes": plan.param_bytes,
               "state_bytes": plan.state_bytes, "ref_bytes": plan.ref_bytes}
    if "sft" in tasks:
        results["sft"] = report(f"SFT: batch {args.batch} x {args.seq} tokens ({args.seq - args.target_len} prompt + "
                                f"{args.target_len} target)", plan, tasks["sft"], resident_of["sft"], args.hbm_gb)
    if "grpo" in tasks:
        results["grpo"] = report(
            f"GRPO iteration: {args.prompts} prompts x G={args.group_size}, prompt {args.prompt_len} + completion "
            f"{args.completion_len} tokens, shared_prompt {not args.no_shared_prompt}", plan, tasks["grpo"],
            resident_of["grpo"], args.hbm_gb)
    return results


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    plan_memory(FLAGS)


if __name__ == "__main__":
    cli.main(main)
