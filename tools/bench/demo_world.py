"""Benchmark: building the procedural demo world (``demo_world.make_demo_world``).

Times N images rendered and written as JPEGs plus their CSV, against the
floor of the same run: N images of noise of the same size only JPEG-encoded
and written (what any image dataset writer pays). The ratio is the cost of
rendering the scenes.

  .venv/bin/python tools/bench/demo_world.py --num_images=300
"""

import os
import tempfile

import numpy as np
import PIL.Image
from absl import flags

import common
from geor_jax.data import demo_world
from geor_jax.run import cli

_NUM_IMAGES = flags.DEFINE_integer("num_images", 300, "Images per build.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed builds after one warm-up (median reported).")


def encode_only(out_dir: str, num_images: int, height: int = 224, width: int = 224) -> None:
    """The floor: ``num_images`` noise images JPEG-encoded at the demo world's quality and written."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for i in range(num_images):
        PIL.Image.fromarray(pixels).save(os.path.join(out_dir, f"{i}.jpg"), quality=92)


def main(_):
    n = _NUM_IMAGES.value
    with tempfile.TemporaryDirectory() as tmp:
        build, _ = common.median_time(lambda: demo_world.make_demo_world(tmp, num_images=n, seed=0), _REPEATS.value)
        floor, _ = common.median_time(lambda: encode_only(tmp, n), _REPEATS.value)
    print(f"demo world, {n} images: median {build:.2f} s ({1e3 * build / n:.1f} ms/image)")
    print(f"JPEG encode + write only: median {floor:.2f} s ({1e3 * floor / n:.1f} ms/image); "
          f"build / floor = {build / floor:.1f}x")


if __name__ == "__main__":
    cli.main(main)
