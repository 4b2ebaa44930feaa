"""Images read in place: loose folders, tar archives (one, many, or one split into byte chunks) and zip files.

Nothing is ever extracted to disk. A tar is indexed once (member name ->
byte offset and size of its data; only the 512-byte headers are read, the
data is skipped by seeking) and the index is cached as a small ``.npz`` in
``index_dir``; MP16-Pro's own ``tar_index.pkl`` (a pickled dict of member
name -> ``tarfile.TarInfo``, as G3 ships it) is read instead when present,
with an unpickler that only builds ``TarInfo`` objects. A tar split into
chunks (``cat mp-16-images* > mp-16-images.tar``) is read as one stream
(``ChunkedFile``), so the index's offsets are those of the whole tar. Zip
files carry their own index (the central directory).

``ImageLocator`` maps a CSV row's image reference to a ``Source`` (a small
picklable tuple) and ``read_source`` returns its bytes; worker processes
open each archive once and read with ``os.pread`` (no shared file position,
so threads may share a handle).
"""

from __future__ import annotations

import bisect
import functools
import glob
import hashlib
import io
import os
import pickle
import tarfile
import zipfile
from collections.abc import Iterable, Sequence

import numpy as np

# ("file", path) | ("tar", chunk paths, offset, size) | ("zip", path, member name)
Source = tuple


class ArchiveError(ValueError):
    """An archive cannot be read in place (compressed tar, bad shipped index): one line naming the file."""


class ChunkedFile(io.RawIOBase):
    """Several files read as one seekable byte stream (a tar split into chunks), with ``pread``."""

    def __init__(self, paths: Sequence[str]):
        super().__init__()
        self.paths = tuple(paths)
        sizes = [os.path.getsize(p) for p in self.paths]
        self.starts = list(np.cumsum([0] + sizes[:-1]))
        self.size = sum(sizes)
        self._fds = [os.open(p, os.O_RDONLY) for p in self.paths]
        self._position = 0

    def pread(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` of the joined stream (fewer at its end); crosses chunk borders."""
        parts, end = [], min(offset + size, self.size)
        while offset < end:
            i = bisect.bisect_right(self.starts, offset) - 1
            within = offset - self.starts[i]
            data = os.pread(self._fds[i], end - offset, within)
            if not data:
                break
            parts.append(data)
            offset += len(data)
        return b"".join(parts)

    def readinto(self, buffer) -> int:
        data = self.pread(self._position, len(buffer))
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            for fd in self._fds:
                os.close(fd)
        super().close()


def _member_name(name: str) -> str:
    """A member name without a leading ``./`` or ``/`` (how rows refer to it)."""
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    return name


class MemberIndex:
    """Sorted member names (UTF-8 bytes) with the offset and size of each member's data.

    Numpy arrays rather than a dict: 4.1M MP16 members take ~230 MB instead of ~1.2 GB of Python objects.
    """

    def __init__(self, names: Iterable[str], offsets: Iterable[int], sizes: Iterable[int]):
        names = np.array([_member_name(n).encode("utf-8", "surrogateescape") for n in names], dtype=bytes)
        order = np.argsort(names, kind="stable")
        self.names = names[order]
        self.offsets = np.asarray(list(offsets), np.int64)[order] if len(order) else np.zeros(0, np.int64)
        self.sizes = np.asarray(list(sizes), np.int64)[order] if len(order) else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.names)

    def find(self, name: str) -> tuple[int, int] | None:
        """(offset, size) of member ``name``, or None."""
        key = name.encode("utf-8", "surrogateescape")
        i = int(np.searchsorted(self.names, key))
        if i < len(self.names) and self.names[i] == key:
            return int(self.offsets[i]), int(self.sizes[i])
        return None

    def save(self, path: str) -> None:
        """Write the index as ``.npz`` (atomically: a crash leaves no half-written index)."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = f"{path}.{os.getpid()}.partial"
        with open(partial, "wb") as f:
            np.savez(f, names=self.names, offsets=self.offsets, sizes=self.sizes)
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str) -> "MemberIndex":
        """An index written by ``save``."""
        with np.load(path) as data:
            index = cls.__new__(cls)
            index.names, index.offsets, index.sizes = data["names"], data["offsets"], data["sizes"]
        return index


def index_tar(stream: io.RawIOBase, label: str) -> MemberIndex:
    """Index the regular files of an uncompressed tar by reading only its headers."""
    names, offsets, sizes = [], [], []
    try:
        tar = tarfile.open(fileobj=stream, mode="r:")  # "r:" refuses compression: data must be seekable in place
    except tarfile.ReadError as error:
        raise ArchiveError(f"{label}: not an uncompressed tar ({error}); a compressed tar cannot be read in place, "
                           "decompress it once (gunzip) and point the build at the .tar") from None
    with tar:
        while True:
            try:
                member = tar.next()
            except tarfile.ReadError as error:  # cut short (a chunk missing): index what is there
                print(f"{label}: the tar ends early after {len(names)} members ({error}); later rows count as "
                      "image_missing")
                break
            if member is None:
                break
            if member.isfile():
                names.append(member.name)
                offsets.append(member.offset_data)
                sizes.append(member.size)
            tar.members.clear()  # tarfile keeps every TarInfo otherwise (GBs for MP16)
    return MemberIndex(names, offsets, sizes)


class _TarInfoUnpickler(pickle.Unpickler):
    """Unpickles only ``tarfile.TarInfo`` (and what pickle needs to rebuild one): a shipped index runs no code."""

    _ALLOWED = {("tarfile", "TarInfo"), ("copyreg", "_reconstructor"), ("builtins", "object")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a tar index holds only tarfile.TarInfo")
        return super().find_class(module, name)


def load_shipped_tar_index(path: str, stream: ChunkedFile) -> MemberIndex:
    """MP16-Pro's ``tar_index.pkl`` (dict name -> TarInfo) as a ``MemberIndex``, checked against ``stream``.

    Every entry must lie inside the stream, and the header of the first and
    last entries must name the same member there; otherwise the index is for
    another archive (``ArchiveError``).
    """
    try:
        with open(path, "rb") as f:
            table = _TarInfoUnpickler(f).load()
        infos = list(table.values())
        if not all(isinstance(info, tarfile.TarInfo) for info in infos):
            raise TypeError("values are not TarInfo")
    except (pickle.UnpicklingError, TypeError, AttributeError, EOFError, ValueError) as error:
        raise ArchiveError(f"{path}: not a tar index (dict of name -> tarfile.TarInfo): {error}") from None
    for info in infos:
        if info.offset_data + info.size > stream.size:
            raise ArchiveError(f"{path}: member {info.name!r} ends at byte {info.offset_data + info.size}, past the "
                               f"{stream.size}-byte archive {stream.paths[0]}: the index is for another archive")
    for info in infos[:1] + infos[-1:]:
        try:
            header = tarfile.TarInfo.frombuf(stream.pread(info.offset, tarfile.BLOCKSIZE), tarfile.ENCODING,
                                             "surrogateescape")
        except tarfile.HeaderError:
            header = None
        if header is None or _member_name(header.name) != _member_name(info.name):
            raise ArchiveError(f"{path}: no header for {info.name!r} at byte {info.offset} of {stream.paths[0]}: "
                               "the index is for another archive")
    return MemberIndex([i.name for i in infos], [i.offset_data for i in infos], [i.size for i in infos])


def _fingerprint(paths: Sequence[str]) -> str:
    """A short hash of the archive files' paths, sizes and modification times (the index cache key)."""
    text = "\n".join(f"{os.path.abspath(p)}\t{os.path.getsize(p)}\t{os.path.getmtime(p)}" for p in paths)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tar_index(paths: Sequence[str], index_dir: str | None, shipped: Sequence[str] = ()) -> MemberIndex:
    """The index of the tar made of ``paths`` (one file, or chunks in order): cached, shipped, or built now."""
    cache = None
    if index_dir:
        cache = os.path.join(index_dir, f"{os.path.basename(paths[0])}-{_fingerprint(paths)}.npz")
        if os.path.isfile(cache):
            return MemberIndex.load(cache)
    with ChunkedFile(paths) as stream:
        found = next((p for p in shipped if os.path.isfile(p)), None)
        index = load_shipped_tar_index(found, stream) if found else index_tar(stream, paths[0])
    if cache:
        index.save(cache)
    return index


@functools.lru_cache(maxsize=64)
def _open_chunks(paths: tuple[str, ...]) -> ChunkedFile:
    return ChunkedFile(paths)


@functools.lru_cache(maxsize=64)
def _open_zip(path: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


def read_source(source: Source) -> bytes:
    """The bytes of an image ``Source`` (archives stay open in this process)."""
    kind = source[0]
    if kind == "file":
        with open(source[1], "rb") as f:
            return f.read()
    if kind == "tar":
        _, paths, offset, size = source
        data = _open_chunks(paths).pread(offset, size)
        if len(data) != size:
            raise OSError(f"{paths[0]}: member data at byte {offset} is cut short ({len(data)} of {size} bytes)")
        return data
    if kind == "zip":
        return _open_zip(source[1]).read(source[2])
    raise ValueError(f"unknown image source {source!r}")


def describe_source(source: Source) -> str:
    """Where an image is, for messages: a path, or ``archive[member]``."""
    if source[0] == "file":
        return source[1]
    if source[0] == "tar":
        return f"{source[1][0]}@{source[2]}"
    return f"{source[1]}[{source[2]}]"


class _Folder:
    def __init__(self, root: str):
        self.root, self.label = root, root

    def find(self, name: str) -> Source | None:
        path = os.path.join(self.root, name)
        return ("file", path) if os.path.isfile(path) else None


class _Tar:
    def __init__(self, paths: Sequence[str], index_dir: str | None, shipped: Sequence[str]):
        self.paths = tuple(os.path.abspath(p) for p in paths)
        self.label = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} chunks)"
        self.index = tar_index(self.paths, index_dir, shipped)

    def find(self, name: str) -> Source | None:
        found = self.index.find(name)
        return None if found is None else ("tar", self.paths, found[0], found[1])


class _Zip:
    def __init__(self, path: str):
        self.path, self.label = os.path.abspath(path), path
        with zipfile.ZipFile(path) as archive:
            self.names = {_member_name(info.filename): info.filename for info in archive.infolist()
                          if not info.is_dir()}

    def find(self, name: str) -> Source | None:
        member = self.names.get(name)
        return None if member is None else ("zip", self.path, member)


def _open_archive(path: str, index_dir: str | None, shipped: Sequence[str]):
    """A zip or tar store for ``path`` (by content, not by name)."""
    return _Zip(path) if zipfile.is_zipfile(path) else _Tar([path], index_dir, shipped)


class ImageLocator:
    """Finds a row's image in loose folders and archives, under the layout's image folders.

    Stores are searched in order: the folders, then each archive, then each
    chunked tar. Inside a store, a reference is tried under each image
    folder prefix as written, with ``/`` replaced by ``_`` (MP16's tar keeps
    ``12/ab/1.jpg`` as ``12_ab_1.jpg``) and as its base name.
    """

    def __init__(self, manual_dir: str, image_dirs: Sequence[str], *, archives: Sequence[str] = (),
                 chunks: Sequence[str] = (), shipped_indexes: Sequence[str] = (), index_dir: str | None = None):
        """``archives``: globs of tar/zip files; ``chunks``: globs whose sorted matches form one tar each;
        ``shipped_indexes``: files to read a tar's index from instead of building it (all relative to
        ``manual_dir``); ``index_dir``: where built indexes are cached."""

        def here(path):
            return path if os.path.isabs(path) else os.path.join(manual_dir, path)

        self.prefixes = tuple(dict.fromkeys(d.strip("/") for d in image_dirs))
        shipped = [here(p) for p in shipped_indexes]
        self.stores = [_Folder(here(d)) for d in self.prefixes if os.path.isdir(here(d))]
        seen = set()
        for pattern in archives:
            for path in sorted(glob.glob(here(pattern))):
                if os.path.isfile(path) and path not in seen:
                    seen.add(path)
                    self.stores.append(_open_archive(path, index_dir, shipped))
        for pattern in chunks:
            paths = [p for p in sorted(glob.glob(here(pattern))) if os.path.isfile(p) and p not in seen]
            if paths:
                seen.update(paths)
                self.stores.append(_Tar(paths, index_dir, shipped))
        self.where = [s.label for s in self.stores] or [here(d) for d in self.prefixes]
        self._folders = len([s for s in self.stores if isinstance(s, _Folder)])

    def find(self, ref: str) -> Source | None:
        """The ``Source`` of the image for ``ref``, or None if no store holds it."""
        if not ref:
            return None
        if os.path.isabs(ref):
            return ("file", ref) if os.path.isfile(ref) else None
        names = list(dict.fromkeys([ref, ref.replace("/", "_"), os.path.basename(ref)]))
        for i, store in enumerate(self.stores):
            # A folder store is already rooted at its prefix; archives hold the prefix in member names.
            prefixes = ("",) if i < self._folders else self.prefixes
            for prefix in prefixes:
                for name in names:
                    found = store.find(f"{prefix}/{name}" if prefix else name)
                    if found is not None:
                        return found
        return None
