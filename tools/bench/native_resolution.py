"""Native-resolution batches vs today's single bucket: padding, SFT and rollout tokens/s, compile count.

Three ways to give the DESIGN.md bench model (36M Qwen2.5-VL, 2 CPU threads)
a realistic mix of photo sizes, at equal max pixels:

- ``bucket``: today's path, every image resized to one square bucket of
  ``--max_pixels`` (the pipeline with ``resize="bucket"``);
- ``grid classes`` (candidate 1): images at native size (the processor's
  ``smart_resize`` under ``--max_pixels``), batches grouped by exact grid,
  static grids: one compile per distinct grid in the data;
- ``slots`` (candidate 2, the pipeline's ``resize="native"``): native size,
  one image per row in a patch slot of one of ``--num_shapes`` fitted sizes,
  size-sorted windows, prompts padded to the slot's length: one compile per
  slot size.

The mix is MP16-like: 640x480, 480x640, 500x375, 1024x768 photos, scaled by
``--scale`` per side with ``--max_pixels`` (so the bench model runs on a
CPU; scale 1/2 with max_pixels 504*504 is the usual 1280-token cap at 1/4 of
the area). Records are built from random smooth JPEGs with the real builder
and read by the real pipeline (demo tokenizer, chat template).

Measured per layout over one epoch: padded share of patches and of prompt
tokens, SFT step (fwd+bwd+AdamW) tokens/s and images/s, rollout (prefill +
64-token decode, B=2 prompts x G=8) generated tokens/s, and compiles of the
SFT step. Shapes are timed once each (median of ``--repeats`` after a
warm-up) and an epoch's time is the sum over its batches. A host-only study
then counts the compiled shapes each candidate needs on a continuous mix
(random Flickr-like sizes).

    PYTHONPATH=. python tools/bench/native_resolution.py [--images=512 --batch=16 --threads=2]
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
from absl import app, flags
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common  # noqa: E402
from geor_jax import sampling, sft, train_state  # noqa: E402
from geor_jax.data import builder, patches, pipeline, prompts, shapes  # noqa: E402
from geor_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from geor_jax.models import qwen2_5_vl as qvl  # noqa: E402
from geor_jax.rollout import Prompts  # noqa: E402
from geor_jax.run import cli  # noqa: E402

_THREADS = flags.DEFINE_integer("threads", 2, "CPU threads.", lower_bound=1)
_IMAGES = flags.DEFINE_integer("images", 512, "Records in the epoch.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch", 16, "SFT batch (sequences).", lower_bound=1)
_SCALE = flags.DEFINE_float("scale", 0.5, "Side scale of the MP16-like photo sizes.", lower_bound=0.01)
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", 504 * 504, "Processor max_pixels = the bucket's area.",
                                   lower_bound=28 * 28)
_NUM_SHAPES = flags.DEFINE_integer("num_shapes", 4, "Patch slot sizes of the native pipeline.", lower_bound=1)
_SORT_WINDOW = flags.DEFINE_integer("sort_window", 16, "Batches per size-sorted window.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timing rounds (after one compiling round).", lower_bound=1)
_ROLLOUT_PROMPTS = flags.DEFINE_integer("rollout_prompts", 2, "Prompts per rollout (B).", lower_bound=1)
_GROUP_SIZE = flags.DEFINE_integer("group_size", 8, "Samples per prompt (G).", lower_bound=1)
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens sampled per rollout row.", lower_bound=1)
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/geor_bench_native", "Records and tokenizer (cached).")
_RESULTS = flags.DEFINE_string("results", None, "Write the figures as JSON here.")
_TIMING = flags.DEFINE_bool("timing", True, "Time the SFT step and rollouts (compiles the bench model once per "
                            "shape); --notiming prints the host-side figures only: padding and distinct shapes.")
FLAG_NAMES = ("threads", "images", "batch", "scale", "max_pixels", "num_shapes", "sort_window", "repeats",
              "rollout_prompts", "group_size", "new_tokens", "timing")

# MP16-like photo sizes (width, height) and their shares.
MIX = (((640, 480), 0.4), ((480, 640), 0.2), ((500, 375), 0.25), ((1024, 768), 0.15))
PROMPT = prompts.PromptConfig(instruction="Where was this photo taken? Answer with Country, State, City and "
                                           "Coordinates.")  # about 40 prompt tokens besides the image, as DESIGN.md's
PLACES = ((35.6895, 139.6917), (48.8566, 2.3522), (-33.8688, 151.2093), (40.7128, -74.006), (30.0444, 31.2357),
          (-22.9068, -43.1729), (59.9139, 10.7522), (28.6139, 77.209))


def build_data(workdir: str, images: int, scale: float) -> tuple[str, str]:
    """(records dir, tokenizer dir): random smooth JPEGs of the mix, in the real record format (cached)."""
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    if not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
        tokenizer_lib.build_demo_tokenizer(tokenizer_dir, vocab_size=8192)
    manual = os.path.join(workdir, f"photos_{images}_{scale}")
    if not os.path.isfile(os.path.join(manual, "images.csv")):
        rng = np.random.default_rng(0)
        os.makedirs(manual, exist_ok=True)
        sizes = [MIX[i][0] for i in rng.choice(len(MIX), images, p=[share for _, share in MIX])]
        rows = []
        for i, (w, h) in enumerate(sizes):
            coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            PIL.Image.fromarray(coarse).resize(size, PIL.Image.BILINEAR).save(os.path.join(manual, f"{i:05d}.jpg"))
            lat, lon = PLACES[i % len(PLACES)]
            rows.append(f"{i:05d}.jpg,{lat + rng.uniform(-1, 1):.5f},{lon + rng.uniform(-1, 1):.5f}\n")
        with open(os.path.join(manual, "images.csv"), "w") as f:
            f.write("image_path,lat,lon\n" + "".join(rows))
    records_dir, _ = builder.build_records("generic", manual, os.path.join(workdir, "records"),
                                           config_name=f"mix_{images}_{str(scale).replace('.', '_')}")
    return records_dir, tokenizer_dir


def bench_model(tokenizer) -> qvl.Qwen2VL:
    """The DESIGN.md bench config with the tokenizer's vocabulary and ids; random weights drawn with numpy."""
    ids = {k: v for k, v in tokenizer.special_ids.model_config_overrides().items()
           if k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    t, v = common.BENCH_TEXT, common.BENCH_VISION
    config = qvl.Qwen2VLConfig(
        text=qvl.TextConfig(vocab_size=t["vocab_size"], hidden_size=t["hidden_size"],
                            intermediate_size=t["intermediate_size"], num_layers=t["num_hidden_layers"],
                            num_heads=t["num_attention_heads"], num_kv_heads=t["num_key_value_heads"],
                            rope_theta=1e6, mrope_section=(8, 12, 12)),
        vision=qvl.VisionConfig(depth=v["depth"], hidden_size=v["hidden_size"], num_heads=v["num_heads"],
                                intermediate_size=v["intermediate_size"], out_hidden_size=v["out_hidden_size"],
                                window_size=v["window_size"], fullatt_block_indexes=tuple(v["fullatt_block_indexes"])),
        **ids)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: qvl.Qwen2VL(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)

    def draw(value):
        fan_in = value.shape[0] if len(value.shape) >= 2 else 1
        scale = 1 / np.sqrt(fan_in) if len(value.shape) >= 2 else 0.02
        return value.replace(jnp.asarray(rng.normal(size=value.shape) * scale, value.dtype))

    return nnx.merge(graphdef, jax.tree.map(draw, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable)))


@dataclasses.dataclass
class Epoch:
    """One epoch of a layout, as the timing needs it: each batch's shape, the real and slot counts, and one
    batch of each shape (the others are not kept: an epoch of images does not fit a shared machine's memory)."""

    shapes: list = dataclasses.field(default_factory=list)
    representatives: dict = dataclasses.field(default_factory=dict)
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, b: pipeline.Batch) -> None:
        a, keep = b.arrays, b.arrays["example_mask"] == 1
        key = shape_of(b)
        self.shapes.append(key)
        self.representatives.setdefault(key, b)
        pixels = a["pixel_values"].shape
        tokens = int(a["prompt_mask"][keep].sum() + a["target_mask"][keep].sum())
        self.counts.update(images=int(keep.sum()), tokens=tokens,
                           real_patches=int(np.prod(a["image_grid_thw"][keep], axis=1).sum()),
                           slot_patches=pixels[0] * (pixels[1] if len(pixels) == 3 else 1),
                           real_prompt=int(a["prompt_mask"][keep].sum()), slot_prompt=a["prompt_mask"].size)

    def padding(self) -> dict[str, float]:
        """Padded share of patch slots and of prompt token slots (padding examples count as padding)."""
        c = self.counts
        return {"padded_patch_share": 1 - c["real_patches"] / c["slot_patches"],
                "padded_prompt_token_share": 1 - c["real_prompt"] / c["slot_prompt"],
                "patches_per_image": c["real_patches"] / c["images"]}


def pipeline_batches(records_dir, tokenizer_dir, patch, batch, **overrides):
    """One epoch of host batches from the real pipeline (an iterator)."""
    config = pipeline.PipelineConfig(records_dir=records_dir, tokenizer_dir=tokenizer_dir, global_batch_size=batch,
                                     patch=patch, num_epochs=1, drop_remainder=False, max_target_len=64,
                                     prompt=PROMPT, **overrides)
    return pipeline.make_iterator(config)


def epoch_of(batches) -> Epoch:
    epoch = Epoch()
    for b in batches:
        epoch.add(b)
    return epoch


def grid_class_epoch(native, batch_size: int, template) -> Epoch:
    """Candidate 1: the native examples (in their shuffled order) grouped by exact grid into batches with static
    grids and prompts of their exact length. A class's last batch of the epoch is short and padded, as a
    grouping sampler's must be at the end of an epoch."""
    members = collections.defaultdict(list)  # grid -> the class's examples (pixels kept for the first batch only)
    for b in native:
        a = b.arrays
        for row in np.flatnonzero(a["example_mask"]):
            grid = tuple(int(x) for x in a["image_grid_thw"][row])
            n = int(np.prod(grid))
            width = template.length(n // 4)
            keep = len(members[grid]) < batch_size
            members[grid].append({
                "prompt_tokens": a["prompt_tokens"][row, -width:], "prompt_mask": a["prompt_mask"][row, -width:],
                "target_tokens": a["target_tokens"][row], "target_mask": a["target_mask"][row],
                "pixel_values": a["pixel_values"][row, :n].copy() if keep else None})
    epoch = Epoch()
    for grid, examples in members.items():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            real = len(chunk)
            chunk = chunk + [chunk[-1]] * (batch_size - real)
            arrays = {key: np.stack([e[key] for e in chunk]) for key in
                      ("prompt_tokens", "prompt_mask", "target_tokens", "target_mask")}
            n = int(np.prod(grid))  # only a class's first batch is timed; later ones are counted (no pixels kept)
            arrays["pixel_values"] = (np.concatenate([e["pixel_values"] for e in chunk]) if start == 0
                                      else np.broadcast_to(np.float32(0), (batch_size * n, 1176)))
            arrays.update(image_grid_thw=np.tile(np.asarray(grid, np.int32), (batch_size, 1)),
                          example_mask=(np.arange(batch_size) < real).astype(np.int32))
            epoch.add(pipeline.Batch(arrays, grid, {}))
    return epoch


def shape_of(b: pipeline.Batch):
    return (b.arrays["pixel_values"].shape, b.arrays["prompt_tokens"].shape, b.grid_thw)


def prompts_of(b: pipeline.Batch, rows: int | None = None) -> Prompts:
    """The batch's prompts on device (its first ``rows`` only, if given)."""
    p = b.prompts()
    if rows is not None:
        n = int(np.prod(b.grid_thw)) if b.grid_thw is not None else 0
        p = Prompts(p.tokens[:rows], p.mask[:rows], p.pixel_values[: rows * n] if n else p.pixel_values[:rows],
                    p.grids[:rows], None if p.row_grids is None else p.row_grids[:rows])
    return jax.tree.map(jnp.asarray, p)


class Timer:
    """One model, SFT step and sampler for every layout: each distinct batch shape is compiled once (compiles
    counted per layout), then timed in interleaved rounds, so load drift on a shared machine hits all alike."""

    def __init__(self, tokenizer, args):
        self.args = args
        optimizer = train_state.OptimizerConfig(learning_rate=1e-5, total_steps=1000).make()
        self.graphdef, self.state = train_state.create_train_state(bench_model(tokenizer), optimizer,
                                                                   jax.random.key(0))
        self.step = sft.make_sft_step(self.graphdef, optimizer)
        self.sampling_config = sampling.SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.9)
        self.seconds = collections.defaultdict(lambda: {"sft": [], "rollout": []})

    def sft(self, b: pipeline.Batch) -> float:
        """Seconds of one SFT step (fwd + bwd + AdamW) on ``b``."""
        a, start = b.arrays, time.perf_counter()
        self.state, metrics = self.step(self.state, prompts_of(b), jnp.asarray(a["target_tokens"]),
                                        jnp.asarray(a["target_mask"]))
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    def rollout(self, b: pipeline.Batch) -> float:
        """Seconds of one rollout (prefill + decode) of the batch's first prompts, G samples each."""
        r, start = prompts_of(b, self.args.rollout_prompts), time.perf_counter()
        out = sampling.sample_groups(nnx.merge(self.graphdef, self.state.params), r, jax.random.key(1),
                                     self.sampling_config, group_size=self.args.group_size)
        jax.block_until_ready(out.tokens)
        return time.perf_counter() - start

    def warm_up(self, epoch: Epoch) -> int:
        """Compile every shape of a layout; returns the SFT step's compiles."""
        compiles = []
        listener = common.compile_listener(compiles, "step")
        for b in epoch.representatives.values():
            self.sft(b)
            self.rollout(b)
        jax.monitoring.unregister_event_duration_listener(listener)
        return len(compiles)

    def round(self, name: str, epoch: Epoch) -> None:
        """Time every shape of a layout once."""
        for key, b in epoch.representatives.items():
            self.seconds[name, key]["sft"].append(self.sft(b))
            self.seconds[name, key]["rollout"].append(self.rollout(b))

    def throughput(self, name: str, epoch: Epoch) -> dict:
        """Epoch throughput: each batch costs its shape's median time."""
        median = {key: {k: float(np.median(v)) for k, v in self.seconds[name, key].items()}
                  for key in epoch.representatives}
        for key, m in median.items():
            print(f"  {name}: pixel_values {key[0]}, prompt {key[1][1]}: SFT step {m['sft']:.2f} s, "
                  f"rollout {m['rollout']:.2f} s", flush=True)
        sft_epoch = sum(median[key]["sft"] for key in epoch.shapes)
        rollout_epoch = sum(median[key]["rollout"] for key in epoch.shapes)
        generated = len(epoch.shapes) * self.args.rollout_prompts * self.args.group_size * self.args.new_tokens
        return {"sft_tokens_per_s": epoch.counts["tokens"] / sft_epoch,
                "sft_images_per_s": epoch.counts["images"] / sft_epoch,
                "rollout_tokens_per_s": generated / rollout_epoch}


def continuous_mix_shapes(max_pixels: int, num_shapes: int, images: int = 4096) -> dict:
    """Compiled shapes each candidate needs on random Flickr-like sizes (long side 500 / 640 / 1024,
    aspect ratio log-uniform in [1/2, 2]): distinct grids (grid classes) vs fitted slots (at most num_shapes)."""
    rng = np.random.default_rng(1)
    config = patches.PatchConfig(max_pixels=max_pixels)
    long_side = rng.choice([500, 640, 1024], images)
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2), images))
    grids, counts = set(), []
    for side, ratio in zip(long_side, aspect):
        w, h = (side, max(1, round(side / ratio))) if ratio >= 1 else (max(1, round(side * ratio)), side)
        rh, rw = patches.native_size(h, w, config)
        grids.add((rh // 14, rw // 14))
        counts.append(rh * rw // 196)
    slots = shapes.fit_slots(counts[:1024], num_shapes, config.max_patches)
    used = {shapes.slot_for(c, slots) for c in counts}
    waste = 1 - sum(counts) / sum(shapes.slot_for(c, slots) for c in counts)
    return {"images": images, "distinct_grids": len(grids), "slots": len(used), "per_image_slot_padding": waste}


def run(args) -> dict:
    """Build the data, time the three layouts, print the table; ``args``: the parsed flags."""
    started = time.perf_counter()
    records_dir, tokenizer_dir = build_data(args.workdir, args.images, args.scale)
    tokenizer = tokenizer_lib.load_tokenizer(tokenizer_dir)
    template = prompts.prompt_template(tokenizer, PROMPT)
    patch = patches.PatchConfig(max_pixels=args.max_pixels)
    side = int(np.sqrt(args.max_pixels)) // 28 * 28
    bucket_prompt = template.length((side // 14) ** 2 // 4)
    layouts = {
        "bucket": epoch_of(pipeline_batches(records_dir, tokenizer_dir, patch, args.batch, resize="bucket",
                                            buckets=((side, side),), max_prompt_len=bucket_prompt)),
        "slots": epoch_of(pipeline_batches(records_dir, tokenizer_dir, patch, args.batch, num_shapes=args.num_shapes,
                                           sort_window=args.sort_window)),
        "grid classes": grid_class_epoch(pipeline_batches(records_dir, tokenizer_dir, patch, args.batch, num_shapes=1,
                                                          sort_window=1), args.batch, template),
    }
    print(f"{args.images} images (MP16-like mix x{args.scale}), batch {args.batch}, max_pixels {args.max_pixels} "
          f"(bucket {side}x{side}); {args.threads} threads; load {common.load_average()}", flush=True)
    results = {"args": {name: getattr(args, name) for name in FLAG_NAMES},
               "layouts": {name: epoch.padding() | {"shapes": len(epoch.representatives), "batches": len(epoch.shapes)}
                           for name, epoch in layouts.items()}}
    if args.timing:
        timer = Timer(tokenizer, args)
        for name, batches in layouts.items():
            results["layouts"][name]["sft_compiles"] = timer.warm_up(batches)
        for _ in range(args.repeats):
            for name, batches in layouts.items():
                timer.round(name, batches)
        for name, batches in layouts.items():
            results["layouts"][name].update(timer.throughput(name, batches))
    results["continuous_mix"] = continuous_mix_shapes(args.max_pixels, args.num_shapes)
    base = results["layouts"]["bucket"]
    if args.timing:
        print("\n| layout | padded patches | padded prompt tokens | patches / image | shapes | SFT compiles | "
              "SFT tokens/s | SFT images/s | rollout tokens/s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    else:
        print("\n| layout | padded patches | padded prompt tokens | patches / image | shapes (compiles per jitted "
              "function) | batches |\n|---|---:|---:|---:|---:|---:|")
    for name, r in results["layouts"].items():
        row = (f"| {name} | {100 * r['padded_patch_share']:.1f}% | {100 * r['padded_prompt_token_share']:.1f}% | "
               f"{r['patches_per_image']:.0f} | {r['shapes']} |")
        if args.timing:
            row += (f" {r['sft_compiles']} | {r['sft_tokens_per_s']:.0f} "
                    f"({r['sft_tokens_per_s'] / base['sft_tokens_per_s']:.2f}x) | {r['sft_images_per_s']:.2f} "
                    f"({r['sft_images_per_s'] / base['sft_images_per_s']:.2f}x) | {r['rollout_tokens_per_s']:.0f} "
                    f"({r['rollout_tokens_per_s'] / base['rollout_tokens_per_s']:.2f}x) |")
        else:
            row += f" {r['batches']} |"
        print(row)
    c = results["continuous_mix"]
    print(f"\nContinuous mix ({c['images']} random Flickr-like sizes): grid classes need {c['distinct_grids']} "
          f"compiled shapes, slots {c['slots']} (<= {args.num_shapes}) with {100 * c['per_image_slot_padding']:.1f}% "
          f"per-image slot padding; total {time.perf_counter() - started:.0f} s, load {common.load_average()}")
    if args.results:
        with open(args.results, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return results


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    common.thread_flags(_THREADS.value)
    run(flags.FLAGS)


if __name__ == "__main__":
    cli.main(main)
