"""Per-device memory of the SFT and GRPO steps for real Qwen2.5-VL sizes, without weights.

Builds the model abstractly (``nnx.eval_shape``: no parameter is allocated),
gives every parameter, optimizer moment and input a ``jax.ShapeDtypeStruct``
with its ``NamedSharding`` on a mesh of fake CPU devices, lowers and compiles
the library's own jitted functions ahead of time and prints what XLA's
buffer assignment says each device needs (``compiled.memory_analysis()``):

- SFT: ``geor_jax.sft.make_sft_step``.
- GRPO, one iteration: the sampler's prefill and decode loop
  (``geor_jax.sampling``), the reference log-probs
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

import argparse
import dataclasses
import math
import os
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="7b", help="3b, 7b, bench (the ~36M DESIGN.md config), tiny, or a config.json path")
    parser.add_argument("--layers", type=int, default=None, help="override the text decoder depth (reduced runs)")
    parser.add_argument("--vision_depth", type=int, default=None, help="override the vision tower depth (reduced runs)")
    parser.add_argument("--task", default="all", choices=("sft", "grpo", "all"))
    parser.add_argument("--mesh", default="1,8,1", help="data,fsdp,tensor sizes")
    parser.add_argument("--hbm_gb", type=float, default=None, help="device memory to compare against (default: none)")
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype")
    parser.add_argument("--param_dtype", default="float32", help="stored (master) parameter dtype")
    parser.add_argument("--no_remat", dest="remat", action="store_false")
    parser.add_argument("--no_scan_layers", dest="scan_layers", action="store_false")
    parser.add_argument("--micro_batches", type=int, default=1, help="gradient accumulation steps (SFT and GRPO)")
    parser.add_argument("--image_side", type=int, default=448, help="square image side in pixels (multiple of 28)")
    parser.add_argument("--max_pixels", type=int, default=None,
                        help="native sizing (data.resize='native') with this processor max_pixels: every image in a "
                             "full patch slot, the largest any image gets (replaces --image_side)")
    parser.add_argument("--logits_chunk_size", type=int, default=128,
                        help="target / completion positions per LM head chunk (SFT and GRPO; the configs' default); "
                             "0: all positions' logits at once")
    # SFT
    parser.add_argument("--batch", type=int, default=64, help="SFT global batch (sequences)")
    parser.add_argument("--seq", type=int, default=512, help="SFT sequence length: prompt (incl. image) + target")
    parser.add_argument("--target_len", type=int, default=64, help="SFT target tokens (the rest of --seq is prompt)")
    # GRPO
    parser.add_argument("--prompts", type=int, default=8, help="GRPO prompts per step (B); rows = B * G")
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--prompt_len", type=int, default=300, help="GRPO prompt tokens incl. the image block")
    parser.add_argument("--completion_len", type=int, default=256)
    parser.add_argument("--no_shared_prompt", dest="shared_prompt", action="store_false")
    parser.add_argument("--ref_dtype", default=None, help="reference params dtype (default: the param dtype)")
    parser.add_argument("--no_sampler", dest="sampler", action="store_false", help="skip the rollout phases")
    parser.add_argument("--extrapolate", default=None, metavar="A,B",
                        help="compile at text/vision depths A and B (three reduced models) and extrapolate every "
                             "phase linearly to the full depth; e.g. 2,4. Full-depth compiles of 7B take > 30 min on CPU")
    return parser.parse_args(argv)


def mesh_shape(text: str) -> tuple[int, int, int]:
    sizes = tuple(int(s) for s in text.split(","))
    if len(sizes) != 3:
        raise ValueError(f"--mesh needs data,fsdp,tensor, got {text!r}")
    return sizes


if __name__ == "__main__":
    # Fake CPU devices must be requested before JAX starts.
    _devices = math.prod(mesh_shape(parse_args().mesh))
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from geor_jax import grpo, logprobs, sampling, sft, train_state  # noqa: E402
from geor_jax import sharding as sharding_lib  # noqa: E402
from geor_jax.data import patches  # noqa: E402
from geor_jax.logprobs import Prompts  # noqa: E402
from geor_jax.models import qwen2_5_vl as qvl  # noqa: E402

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
    if args.max_pixels:
        vision = config.vision
        return Images(slot=patches.PatchConfig(patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                                               max_pixels=args.max_pixels).max_patches)
    side, unit = args.image_side, config.vision.patch_size * config.vision.spatial_merge_size
    if side % unit:
        raise ValueError(f"--image_side {side} must be a multiple of {unit}")
    return Images(grid=(1, side // config.vision.patch_size, side // config.vision.patch_size))


def abstract_prompts(config, mesh, batch: int, prompt_len: int, images: Images) -> Prompts:
    image_tokens = images.patches // config.vision.merge_unit
    if prompt_len < image_tokens + 3:
        raise ValueError(f"prompt length {prompt_len} cannot hold the image's {image_tokens} tokens + 3")
    tokens = abstract((batch, prompt_len), jnp.int32, mesh)
    if images.slot:  # one image per row: (B, slot, patch_dim) and per-row grids as data
        return Prompts(tokens=tokens, mask=tokens,
                       pixel_values=abstract((batch, images.slot, config.vision.patch_dim), jnp.float32, mesh),
                       grids=(), row_grids=abstract((batch, 3), jnp.int32, mesh))
    return Prompts(tokens=tokens, mask=tokens,
                   pixel_values=abstract((batch * images.patches, config.vision.patch_dim), jnp.float32, mesh),
                   grids=(images.grid,) * batch)


class Plan:
    """Abstract model, train state and reference params on a mesh."""

    def __init__(self, config, mesh, *, dtype, param_dtype, remat, scan_layers, ref_dtype=None,
                 learning_rate: float = 1e-6):
        self.config, self.mesh = config, mesh
        abstract_model = nnx.eval_shape(lambda: qvl.Qwen2VL(
            config, dtype=dtype, param_dtype=param_dtype, remat=remat, scan_layers=scan_layers, rngs=nnx.Rngs(0)))
        self.graphdef, params = nnx.split(abstract_model, nnx.Param)
        shardings = sharding_lib.state_shardings(params, mesh)
        self.params = jax.tree.map(lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), params, shardings)
        self.optimizer = train_state.OptimizerConfig(learning_rate=learning_rate).make()
        replicated = NamedSharding(mesh, PartitionSpec())
        self.state = train_state.TrainState(
            params=self.params,
            opt_state=mirror_param_shardings(jax.eval_shape(self.optimizer.init, self.params), self.params, replicated),
            step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
            rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated),
            skipped_updates=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        )
        ref_dtype = ref_dtype or param_dtype
        self.ref_params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, ref_dtype, sharding=p.sharding), self.params)
        self.n_params = count_params(self.params)
        self.param_bytes = per_device_bytes(self.params)
        self.state_bytes = per_device_bytes(self.state)
        self.ref_bytes = per_device_bytes(self.ref_params)


def plan_sft(plan: Plan, *, batch: int, seq: int, target_len: int, images: Images, micro_batches: int,
             logits_chunk_size: int = logprobs.DEFAULT_LOGITS_CHUNK_SIZE) -> list[Phase]:
    mesh, config = plan.mesh, plan.config
    step = sft.make_sft_step(plan.graphdef, plan.optimizer, micro_batches, logits_chunk_size)
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
            "rollout prefill", sampling._prefill, plan.graphdef, plan.params, batch_prompts.tokens, batch_prompts.mask,
            batch_prompts.pixel_values, batch_prompts.row_grids, grids=batch_prompts.grids, group_size=group_size,
            max_len=prompt_len + completion_len, mesh=mesh, resident_arguments=plan.param_bytes)
        cache, logits = with_out_shardings(compiled, mesh)
        key = jax.eval_shape(lambda: jax.random.key(0))
        sampling_config = sampling.SamplingConfig(max_new_tokens=completion_len, temperature=0.9,
                                                  suppress_tokens=(config.image_token_id, config.video_token_id))
        decode, _ = compile_phase("rollout decode", sampling._decode, plan.graphdef, plan.params, cache, logits, key,
                                  config=sampling_config, mesh=mesh, resident_arguments=plan.param_bytes)
        phases += [prefill, decode]
    completions = abstract((rows, completion_len), jnp.int32, mesh)
    per_token = abstract((rows, completion_len), jnp.float32, mesh)
    reference = grpo.make_reference_logprobs(plan.graphdef, grpo_config)
    ref_phase, _ = compile_phase("reference logprobs", reference, plan.ref_params, batch_prompts, completions, completions,
                                 resident_arguments=plan.ref_bytes)
    phases.append(ref_phase)
    if update:
        rollout = grpo.Rollout(prompts=batch_prompts, completions=completions, completion_mask=completions,
                               old_logp=per_token, advantages=abstract((rows,), jnp.float32, mesh), ref_logp=per_token)
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


def run_phases(args, config, mesh, images: Images) -> tuple[Plan, dict[str, list[Phase]]]:
    """Build the plan and compile the requested tasks' phases for one model config."""
    plan = Plan(config, mesh, dtype=jnp.dtype(args.dtype), param_dtype=jnp.dtype(args.param_dtype), remat=args.remat,
                scan_layers=args.scan_layers, ref_dtype=args.ref_dtype and jnp.dtype(args.ref_dtype))
    tasks = {}
    with jax.set_mesh(mesh):  # as train_loop runs them: the model's activation constraints read this mesh
        if args.task in ("sft", "all"):
            tasks["sft"] = plan_sft(plan, batch=args.batch, seq=args.seq, target_len=args.target_len, images=images,
                                    micro_batches=args.micro_batches, logits_chunk_size=args.logits_chunk_size)
        if args.task in ("grpo", "all"):
            tasks["grpo"] = plan_grpo(plan, prompts=args.prompts, group_size=args.group_size,
                                      prompt_len=args.prompt_len, completion_len=args.completion_len, images=images,
                                      micro_batches=args.micro_batches, shared_prompt=args.shared_prompt,
                                      logits_chunk_size=args.logits_chunk_size, sampler=args.sampler)
    return plan, tasks


def extrapolate_phases(args, config, mesh, images: Images, depths: tuple[int, int]) -> dict[str, list[Phase]]:
    """Per-device bytes of the full-depth model from three reduced-depth compiles.

    Every byte count is affine in the number of text layers L and vision blocks D (parameters, their
    gradients and moments, and the activations remat keeps per layer all scale with depth; one layer's
    transient working set does not), so (L=a, D=a), (L=b, D=a) and (L=a, D=b) fix it.
    """
    a, b = depths
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


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = model_config(args.model, args.layers, args.vision_depth)
    data, fsdp, tensor = mesh_shape(args.mesh)
    devices = jax.devices()[: data * fsdp * tensor]
    mesh = sharding_lib.make_mesh(data, fsdp, tensor, devices=devices)
    images = image_inputs(args, config)
    if args.extrapolate:
        depths = tuple(int(x) for x in args.extrapolate.split(","))
        plan = Plan(config, mesh, dtype=jnp.dtype(args.dtype), param_dtype=jnp.dtype(args.param_dtype),
                    remat=args.remat, scan_layers=args.scan_layers, ref_dtype=args.ref_dtype and jnp.dtype(args.ref_dtype))
    else:
        plan, tasks = run_phases(args, config, mesh, images)
    print(f"model {args.model} (text layers {config.text.num_layers}, vision depth {config.vision.depth}): "
          f"{plan.n_params / 1e9:.3f} B params; mesh data={data} fsdp={fsdp} tensor={tensor} ({len(devices)} devices); "
          f"compute {args.dtype}, params {args.param_dtype}, remat {args.remat}, scan_layers {args.scan_layers}, "
          f"micro-batches {args.micro_batches}, logits chunk {args.logits_chunk_size or 'off'}; "
          f"image {f'max_pixels {args.max_pixels}' if args.max_pixels else f'{args.image_side}px'}: "
          f"{images.describe(config.vision.merge_unit)}")
    print(f"per device: params {plan.param_bytes / 1e6:.1f} MB, train state (params + AdamW moments) "
          f"{plan.state_bytes / 1e6:.1f} MB, reference params {plan.ref_bytes / 1e6:.1f} MB", flush=True)
    if args.extrapolate:
        tasks = extrapolate_phases(args, config, mesh, images, depths)
    resident_of = {"sft": plan.state_bytes, "grpo": plan.state_bytes + plan.ref_bytes}
    for phases in tasks.values():  # what each phase keeps resident, from the full-size plan (exact)
        for p in phases:
            p.resident_arguments = (plan.state_bytes if p.name.startswith(("sft step", "grpo step"))
                                    else plan.ref_bytes if p.name.startswith("reference") else plan.param_bytes)
    results = {"n_params": plan.n_params, "param_bytes": plan.param_bytes, "state_bytes": plan.state_bytes,
               "ref_bytes": plan.ref_bytes}
    if "sft" in tasks:
        results["sft"] = report(f"SFT: batch {args.batch} x {args.seq} tokens ({args.seq - args.target_len} prompt + "
                                f"{args.target_len} target)", plan, tasks["sft"], resident_of["sft"], args.hbm_gb)
    if "grpo" in tasks:
        results["grpo"] = report(
            f"GRPO iteration: {args.prompts} prompts x G={args.group_size}, prompt {args.prompt_len} + completion "
            f"{args.completion_len} tokens, shared_prompt {args.shared_prompt}", plan, tasks["grpo"],
            resident_of["grpo"], args.hbm_gb)
    return results


if __name__ == "__main__":
    main()
