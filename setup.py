"""geor_jax: Geo-R (Chain of Region SFT + Haversine-reward GRPO) for Qwen2.5-VL in JAX."""

from setuptools import find_packages, setup

CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml_collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "ml_dtypes==0.6.0",  # bfloat16 views of safetensors files (already a jax dependency)
    "scipy==1.17.1",
    "safetensors==0.8.0",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "tensorflow-datasets==4.9.10",
    "array_record==0.8.6",
    "grain==0.2.18",
    # Each range spans exactly two tested versions: a plain install resolves to the newest (protobuf 7.36.2,
    # pillow 13.0.0, pyarrow 26.0.1); the beam extra pins the older ones apache-beam 2.77 requires
    # (protobuf<7, pillow<13, pyarrow<26), with which the test suite passes too.
    "protobuf>=6.33.6,<=7.36.2",
    "pillow>=12.3.0,<=13.0.0",
    "pyarrow>=25.0.1,<=26.0.1",  # tensorflow-datasets needs it; mining parses CSVs with it
    "reverse_geocoder==1.5.1",
    "pycountry==26.2.16",
    "matplotlib==3.11.2",
    "tensorboardX==2.6.5",
    "etils[epath]==1.15.0",  # every path may be a URL (geor_jax.paths); orbax uses it too
    "tqdm==4.70.1",  # progress bars on a terminal (geor_jax.progress)
]

PYTEST = ["pytest==9.2.0", "pytest-xdist==3.8.0", "hypothesis==6.170.15"]

# gs:// through etils.epath: without TensorFlow (not installed here) epath serves it with fsspec's "gcs"
# filesystem, which is gcsfs. Checkpoint tensors go through TensorStore's own GCS driver, everything else
# (orbax's metadata, metrics, exports, reports) through this. Part of the test extra, so tools/bootstrap.sh
# installs it on every platform and tests/test_gcs.py checks it resolves.
GCS = ["gcsfs==2026.10.1", "fsspec==2026.9.0"]

TEST = [
    # CPU wheel on disk; only for parity tests against transformers.
    "torch==2.13.0",
    # LoRA adapters are checked against PEFT's own loading on transformers (tests/test_peft_io.py); accelerate
    # is its dependency, pinned as the bench extra pins it.
    "peft==0.21.2",
    "accelerate==1.15.0",
] + GCS + PYTEST

# Distributed dataset builds (TFDS on Apache Beam: DirectRunner, Dataflow, Flink, Spark). Install it in its own
# environment (tools/bootstrap.sh beam -> .venv-beam): it moves protobuf, pillow and pyarrow to the older pins.
BEAM = ["apache-beam==2.77.0", "protobuf==6.33.6", "pillow==12.3.0", "pyarrow==25.0.1"]

BENCH = TEST + [
    # The PyTorch peer of the GRPO benchmark (tools/bench/grpo_iteration.py); checked not to move torch,
    # transformers or protobuf.
    "trl==1.16.0",
    "accelerate==1.15.0",
    "datasets==5.2.0",
]

setup(
    name="geor_jax",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["geor_jax", "geor_jax.*"]),
    python_requires=">=3.11",
    install_requires=CORE,
    extras_require={"test": TEST, "gcs": GCS, "bench": BENCH, "beam": BEAM, "beam_test": BEAM + PYTEST},
)
