"""Every path may be a URL: local paths and ``gs://`` (or any scheme ``etils.epath`` resolves) through one type.

The library reads and writes through ``etils.epath`` (orbax already does):
``as_path("gs://bucket/run")`` and ``as_path("/tmp/run")`` have the same
methods. Without TensorFlow, epath serves ``gs://`` / ``s3://`` through
fsspec (``gcsfs`` / ``s3fs``). A few writers and readers only take local
files: transformers' ``save_pretrained`` / ``from_pretrained``, memory-mapped
safetensors, the JAX profiler and array_record's writer. For those,
``staged`` gives a local folder that is uploaded when it closes, and
``local_copy`` a local copy of a URL folder; both pass local paths through
untouched. ``staged_file`` is one file written piece by piece (an object
store cannot append), put in place when it closes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO

from etils import epath

PathLike = str | os.PathLike
_CHUNK_BYTES = 16 << 20


def as_path(path: PathLike) -> epath.Path:
    """``path`` (local or URL) as an ``epath.Path``."""
    return epath.Path(path)


def is_url(path: PathLike) -> bool:
    """Whether ``path`` names a non-local filesystem (``scheme://...``)."""
    return "://" in os.fspath(path)


def copy_tree(source: PathLike, target: PathLike) -> None:
    """Copy the folder ``source`` into ``target`` (created), file by file, between any two filesystems."""
    source, target = as_path(source), as_path(target)
    target.mkdir(parents=True, exist_ok=True)
    for child in source.iterdir():  # not epath's walk: fsspec's drops the scheme from the folders it yields
        if child.is_dir():
            copy_tree(child, target / child.name)
        else:  # streamed, not Path.copy: that picks one filesystem's backend for both ends
            with child.open("rb") as reader, (target / child.name).open("wb") as writer:
                shutil.copyfileobj(reader, writer, _CHUNK_BYTES)


def write_atomic(path: PathLike, data: str | bytes) -> None:
    """Replace the file ``path`` with ``data``, never leaving it half-written.

    Local files go through a temporary file and a rename; an object store
    (``gs://``) replaces an object atomically by itself.
    """
    path = as_path(path)
    if is_url(path):
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return
    partial = path.with_name(path.name + ".tmp")
    partial.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    partial.replace(path)


@contextlib.contextmanager
def staged(target: PathLike, upload: bool = True) -> Iterator[str]:
    """A local folder for writers that need one: ``target`` itself if local, else a temporary folder
    copied to ``target`` when the block ends without error (and ``upload``; other hosts pass False)."""
    if not is_url(target):
        if upload:
            os.makedirs(target, exist_ok=True)
        yield os.fspath(target)
        return
    local = tempfile.mkdtemp(prefix="geor_jax_stage_")
    try:
        yield local
        if upload:
            copy_tree(local, target)
    finally:
        shutil.rmtree(local, ignore_errors=True)


@contextlib.contextmanager
def staged_file(path: PathLike) -> Iterator[IO[str]]:
    """A local text file (UTF-8) to write piece by piece that becomes ``path`` (local or a URL) only when the
    block ends without error: renamed into place beside it, or uploaded once; on an error nothing appears."""
    url = is_url(path)
    if url:
        handle, local = tempfile.mkstemp(prefix="geor_jax_stage_")
        os.close(handle)
    else:
        local = os.fspath(path) + ".tmp"
    try:
        with open(local, "w", encoding="utf-8", newline="") as f:
            yield f
        if url:
            with open(local, "rb") as reader, as_path(path).open("wb") as writer:
                shutil.copyfileobj(reader, writer, _CHUNK_BYTES)
        else:
            os.replace(local, path)
    finally:
        if os.path.exists(local):
            os.remove(local)


_copies: dict[str, str] = {}


def local_copy(directory: PathLike) -> str:
    """A local path holding the folder ``directory``: itself if local, else a copy made once per
    process (removed at exit) for readers that only open local files."""
    key = os.fspath(directory)
    if not is_url(key):
        return key
    if key not in _copies:
        if not as_path(key).is_dir():
            raise FileNotFoundError(f"{key}: no such folder")
        local = tempfile.mkdtemp(prefix="geor_jax_copy_")
        atexit.register(shutil.rmtree, local, True)
        copy_tree(key, local)
        _copies[key] = local
    return _copies[key]
