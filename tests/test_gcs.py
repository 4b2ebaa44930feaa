"""``gs://`` paths on a fresh install: epath serves them through fsspec's ``gcs`` filesystem, which is
gcsfs (setup.py's ``gcs`` extra, part of ``test`` and so of every ``tools/bootstrap.sh`` platform). Checked
offline: no bucket is read, and the filesystem is made with anonymous credentials, as no credential lookup
(which may probe the GCE metadata server) must run here."""

import pathlib
import re

import fsspec
from etils.epath import backend

from geor_jax import paths

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gs_paths_go_through_gcsfs():
    path = paths.as_path("gs://bucket/run") / "metrics.jsonl"
    assert paths.is_url(path) and str(path) == "gs://bucket/run/metrics.jsonl"
    assert path._backend is backend.fsspec_backend  # not tf.io.gfile: setup.py installs no tensorflow
    gcs = fsspec.get_filesystem_class("gs")  # ImportError "Install gcsfs to access Google Storage" without it
    assert gcs.__module__.startswith("gcsfs.")
    fs = fsspec.filesystem("gcs", token="anon", finalize_on_close=True)  # how epath opens it, bar credentials
    assert isinstance(fs, gcs) and fs._strip_protocol(str(path)) == "bucket/run/metrics.jsonl"


def test_setup_pins_the_gcs_backend_into_the_test_extra_that_bootstrap_installs():
    setup = (ROOT / "setup.py").read_text()
    assert re.search(r'^GCS = \["gcsfs==[\d.]+", "fsspec==[\d.]+"\]', setup, re.M), "pinned gcsfs and fsspec"
    assert re.search(r"^TEST = \[$", setup, re.M) and "] + GCS + PYTEST" in setup
    assert '-e ".[$extra]"' in (ROOT / "tools/bootstrap.sh").read_text() and "extra=test" in (
        ROOT / "tools/bootstrap.sh").read_text()
