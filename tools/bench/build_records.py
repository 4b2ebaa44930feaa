"""Dataset build throughput: one process vs worker processes vs Beam's DirectRunner, on the same synthetic MP16.

    .venv-beam/bin/python tools/bench/build_records.py        # all three (Beam needs the beam extra's venv)
    .venv/bin/python tools/bench/build_records.py             # without Beam
    .venv/bin/python tools/bench/build_records.py --rounds=5  # medians of 5 rounds (this VM is noisy)

Writes ``--images`` synthetic 640x480 JPEGs (smooth gradients, shapes and
noise, ~50 KB each, like photos at quality 90) into an MP16-Pro download:
``MP16_Pro_filtered.csv`` plus the images' tar cut into 4 byte chunks, read
in place. Each build runs the README's MP16-Pro command (``--max_long_side=512``:
every image is decoded, resized and re-encoded) into a fresh folder and
is timed end to end (CSV, tar index, reverse geocoding, TFDS writing).
Prints images/s and the speed-up over one process (with ``--rounds``:
medians, and each round's own ratio) beside the ceiling: the same images
re-encoded, nothing else, in one process and in two, which is what this
machine's cores give the work itself. Then the main process's CPU per image
and projections for MP16-Pro's 4.12M images from CPU time per image (wall
time on this shared 2-core machine depends on its load; CPU time does not):
a host with c cores and c - 1 worker processes, bounded by the main process
that writes the records.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import PIL.Image
import PIL.ImageDraw

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from geor_jax.data import builder, encoding  # noqa: E402

MP16_IMAGES = 4_120_000  # images in MP16-Pro's tars (4.65M rows)


def synthetic_jpeg(rng: np.random.Generator, size=(640, 480)) -> bytes:
    """A photo-like 640x480 JPEG: a colour gradient, a few shapes, mild noise."""
    width, height = size
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    base = rng.uniform(0, 255, 3)
    tilt = rng.uniform(-120, 120, (2, 3))
    pixels = base + x[..., None] * tilt[0] + y[..., None] * tilt[1] + rng.normal(0, 6, (height, width, 3))
    image = PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = PIL.ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        box = (x0, y0, x0 + rng.integers(20, 200), y0 + rng.integers(20, 160))
        draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_collection(root: str, count: int, seed: int = 0) -> list[bytes]:
    """An MP16-Pro download of ``count`` synthetic images (tar in 4 chunks); returns the JPEGs written."""
    import tarfile

    rng = np.random.default_rng(seed)
    tar_path = os.path.join(root, "whole.tar")
    images = []
    with tarfile.open(tar_path, "w") as tar, open(os.path.join(root, "MP16_Pro_filtered.csv"), "w") as csv:
        csv.write("IMG_ID,LAT,LON\n")
        for i in range(count):
            ref = f"{i % 256:02x}/{i // 256 % 256:02x}/{i}.jpg"
            data = synthetic_jpeg(rng)
            images.append(data)
            info = tarfile.TarInfo(f"mp-16-images/{ref.replace('/', '_')}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            csv.write(f"{ref},{rng.uniform(-55, 70):.6f},{rng.uniform(-180, 180):.6f}\n")
    data = open(tar_path, "rb").read()
    bounds = np.linspace(0, len(data), 5).astype(int)
    for k in range(4):
        with open(os.path.join(root, f"mp-16-images{k:02d}"), "wb") as f:
            f.write(data[bounds[k]:bounds[k + 1]])
    os.remove(tar_path)
    return images


_IMAGES: list[bytes] = []  # a ceiling worker's copy of the collection's JPEGs


def _hold_images(images: list[bytes]) -> None:
    _IMAGES[:] = images


def _encode_range(start: int, stop: int) -> None:
    for data in _IMAGES[start:stop]:
        encoding.encode_image(data, 512, 95)


def encode_seconds(images: list[bytes], pool=None, processes: int = 1) -> float:
    """Wall seconds to re-encode ``images`` as the build does (``--max_long_side=512``), nothing else: in this
    process, or split evenly over ``pool``'s ``processes`` (which hold the images already). The two-process figure
    against the one-process one is what this machine's cores give this work: the build's ceiling."""
    start = time.perf_counter()
    if pool is None:
        for data in images:
            encoding.encode_image(data, 512, 95)
    else:
        bounds = np.linspace(0, len(images), processes + 1).astype(int)
        list(pool.map(_encode_range, bounds[:-1], bounds[1:]))
    return time.perf_counter() - start


def timed_build(manual: str, work: str, name: str, **kwargs) -> tuple[float, float, int]:
    """Wall seconds, this (main) process's CPU seconds and records of one fresh build of the collection."""
    data_dir = os.path.join(work, name)
    start, cpu = time.perf_counter(), time.process_time()
    _, report = builder.build_records("mp16_pro", manual, data_dir, max_long_side=512, **kwargs)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    shutil.rmtree(data_dir)
    return seconds, cpu, report.written


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker-process counts to time")
    parser.add_argument("--beam_workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="times to run every build, in turn")
    parser.add_argument("--work_dir", default=None)
    args = parser.parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="geor_build_bench_")
    manual = os.path.join(work, "manual")
    os.makedirs(manual, exist_ok=True)
    images = write_collection(manual, args.images)
    kb = float(np.mean([len(data) for data in images])) / 1e3
    print(f"{args.images} synthetic 640x480 JPEGs ({kb:.0f} KB each on average), MP16-Pro layout, tar in 4 chunks; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} before the runs")
    timed_build(manual, work, "warmup", num_workers=0)  # imports and reverse_geocoder warm

    runs = [("single process", 1, dict(num_workers=0))]
    runs += [(f"{n} worker process{'es' if n > 1 else ''}", n, dict(num_workers=n)) for n in args.workers]
    try:
        from apache_beam.options.pipeline_options import PipelineOptions

        options = PipelineOptions([f"--direct_num_workers={args.beam_workers}",
                                   "--direct_running_mode=multi_processing"])
        runs.append((f"Beam DirectRunner, {args.beam_workers} processes", args.beam_workers,
                     dict(beam_options=options)))
    except ImportError:
        print("apache_beam not importable: Beam run skipped (run with .venv-beam, see tools/bootstrap.sh beam)")

    # Rounds: each round runs every build once, in turn, so a ratio compares builds that ran minutes apart
    # at most; this VM's speed drifts by 30% over a few minutes. Figures are medians over rounds.
    seconds = {label: [] for label, _, _ in runs}
    cpu_ms = {label: [] for label, _, _ in runs}
    ceiling = []  # per round: one process's encoding seconds over two processes'
    context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                          else "spawn")
    pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=context, initializer=_hold_images, initargs=(images,))
    encode_seconds(images[:8], pool, 2)  # the pool's processes started
    for round_index in range(args.rounds):
        one, two = encode_seconds(images), encode_seconds(images, pool, 2)
        ceiling.append(one / two)
        print(f"  round {round_index + 1}, encoding only: one process {one:.1f} s, two processes {two:.1f} s, "
              f"{one / two:.2f}x", flush=True)
        for label, _, kwargs in runs:
            wall, cpu, written = timed_build(manual, work, label.replace(" ", "_").replace(",", ""), **kwargs)
            assert written == args.images, (label, written)
            seconds[label].append(wall)
            cpu_ms[label].append(1e3 * cpu / args.images)
            print(f"  round {round_index + 1}, {label}: {wall:.1f} s, {args.images / wall:.1f} images/s, main "
                  f"process {1e3 * cpu / args.images:.1f} ms CPU per image, load average {os.getloadavg()[0]:.1f}",
                  flush=True)

    base = runs[0][0]
    print(f"\nmedians over {args.rounds} round(s); 'vs one process' is the median of each round's own ratio")
    print("| build | processes | seconds | images/s | vs one process | per round | main process CPU ms/image |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    results = []
    for label, cores, _ in runs:
        ratios = [b / s for b, s in zip(seconds[base], seconds[label])]
        median_s, main_ms = float(np.median(seconds[label])), float(np.median(cpu_ms[label]))
        results.append((label, main_ms))
        print(f"| {label} | {cores} | {median_s:.1f} | {args.images / median_s:.1f} | {np.median(ratios):.2f}x | "
              f"{', '.join(f'{r:.2f}' for r in ratios)} | {main_ms:.1f} |")
    print(f"| ceiling: encoding only, no build | 2 | | | {np.median(ceiling):.2f}x | "
          f"{', '.join(f'{r:.2f}' for r in ceiling)} | |")
    pool.shutdown()
    # CPU per image does not depend on how busy the machine is; wall time does. One process does all the work
    # (t ms per image); with worker processes the main one still reads, geocodes and writes (m ms per image), the
    # workers do the rest (t - m). A host with c cores and c - 1 workers then builds min((c - 1) / (t - m), 1 / m)
    # images per ms; past 1 / m, split the host into shards (--shard=i/n, one writer each) or use Beam.
    single_ms = results[0][1]
    multi = [r for r in results if r[0].endswith("processes") and not r[0].startswith("Beam")]
    if multi:
        main_ms = multi[-1][1]
        worker_ms = single_ms - main_ms
        print(f"\nCPU per image: {single_ms:.1f} ms in one process; with workers {main_ms:.1f} ms in the main process "
              f"and ~{worker_ms:.1f} ms in the workers")
        def rate(cores, shards=1):
            """Images/s of one host running ``shards`` shards, each with cores / shards - 1 workers."""
            return 1e3 * shards * min((cores / shards - 1) / worker_ms, 1 / main_ms)

        print("| cores (one host) | one build: images/s | MP16-Pro hours | best --shard split on the host | "
              "images/s | MP16-Pro hours |")
        print("| ---: | ---: | ---: | --- | ---: | ---: |")
        for cores in (2, 8, 16, 32, 64):
            shards = max((n for n in (1, 2, 4, 8, 16) if cores // n >= 2), key=lambda n: rate(cores, n))
            print(f"| {cores} | {rate(cores):.0f} | {MP16_IMAGES / rate(cores) / 3600:.2f} | {shards} shards x "
                  f"{cores // shards - 1} workers | {rate(cores, shards):.0f} | "
                  f"{MP16_IMAGES / rate(cores, shards) / 3600:.2f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
