"""An offline URL scheme for the tests: ``lfs://bucket/path`` is the file ``$LFS_ROOT/bucket/path``.

    LFS_ROOT=/tmp/root python tests/url_scheme.py launch/train.py --workdir=lfs://bucket/run ...

Registered with ``etils.epath`` the way epath serves ``gs://`` without
TensorFlow: an fsspec filesystem (a local-backed ``DirFileSystem`` under the
scheme ``lfs``) behind epath's fsspec backend. Everything that goes through
epath (the library, orbax's folders and metadata, JAX's compilation cache)
then meets a non-local path: URL strings, fsspec's rename / listing
semantics, no ``os.path`` shortcut.

What cannot use it, and so what stands in:

- TensorStore, which writes orbax's arrays, has a fixed set of compiled
  kvstore drivers (``file``, ``gcs``, ``s3``, ``memory``, ...); orbax's
  ``tensorstore_utils._build_ocdbt_kvstore_tspec`` maps ``gs://`` to the
  ``gcs`` driver and otherwise needs an absolute local path (``lfs://...``
  fails with "Checkpoint path should be absolute"). ``route_tensorstore``
  points orbax's kvstore specs for ``lfs://`` at the ``file`` driver on the
  backing folder, in place of the ``gcs`` driver a ``gs://`` path gets.
- array_record reads local files and ``gs://`` (its own GCS reader) only,
  and writes local files only, so the tests keep records on local paths.

Run as a script, it registers the scheme and runs the script named first.
"""

import functools
import os
import runpy
import sys

from etils import epath
from etils.epath import backend, gpath
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

SCHEME = "lfs"
ROOT_VARIABLE = "LFS_ROOT"


class LocalBackedFileSystem(DirFileSystem):
    """fsspec: ``lfs://x`` is ``$LFS_ROOT/x``."""

    protocol = SCHEME

    def __init__(self, **kwargs):
        super().__init__(path=os.environ[ROOT_VARIABLE], fs=LocalFileSystem(), **kwargs)


class _Backend(backend._FileSystemSpecBackend):  # epath's fsspec backend (what serves gs://), for lfs://
    def fs(self, path):
        return _filesystem()


@functools.cache
def _filesystem() -> LocalBackedFileSystem:
    return LocalBackedFileSystem()


_BACKEND = _Backend()


@epath.register_path_cls(f"{SCHEME}://")
class LfsPath(gpath.PosixGPath):
    """``epath.Path("lfs://...")``: held as ``/lfs/...`` inside, as epath holds ``gs://`` paths."""

    def __new__(cls, *parts):
        full = "/".join(os.fspath(p) for p in parts)
        if full.startswith(f"{SCHEME}://"):
            full = f"/{SCHEME}/" + full[len(SCHEME) + 3:]
        return epath.Path.__new__(cls, full)

    @property
    def _uri_scheme(self):
        return SCHEME if self.parts[:2] == ("/", SCHEME) else None

    @property
    def _backend(self):
        return _BACKEND if self._uri_scheme else backend.os_backend


def backing_path(url: str) -> str:
    """The local file behind ``lfs://...``."""
    return os.path.join(os.environ[ROOT_VARIABLE], url[len(SCHEME) + 3:])


def route_tensorstore() -> None:
    """Orbax's TensorStore kvstore specs for ``lfs://`` paths: the ``file`` driver on the backing folder."""
    from orbax.checkpoint._src.serialization import tensorstore_utils

    normalize = tensorstore_utils._normalize_path

    def normalize_lfs(path: str) -> str:
        path = normalize(path)  # os.path.normpath: "lfs://b/x" -> "lfs:/b/x"
        return backing_path(f"{SCHEME}://{path[len(SCHEME) + 2:]}") if path.startswith(f"{SCHEME}:/") else path

    tensorstore_utils._normalize_path = normalize_lfs


if __name__ == "__main__":
    route_tensorstore()
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
    runpy.run_path(sys.argv[0], run_name="__main__")
