"""Minimal safetensors reader/writer on numpy memory maps.

Reading maps each file and views one tensor at a time (bfloat16 through
ml_dtypes), so a checkpoint is never loaded whole into host memory; writing
streams tensors to disk one by one. Only the safetensors format is read or
written: no pickle. Headers and the index are validated when a checkpoint is
opened (``CheckpointFileError`` names the file and tensor), so a truncated or
inconsistent file fails before any tensor is used.
"""

from __future__ import annotations

import json
import math
import os
import struct

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


# safetensors' own bound: a corrupt length field must not make the reader pull a whole shard into memory.
_MAX_HEADER_BYTES = 100 << 20


class CheckpointFileError(ValueError):
    """A checkpoint file (shard or index) is malformed; the message names the file and, where known, the tensor."""

    def __init__(self, path: str, message: str, tensor: str | None = None):
        super().__init__(f"{path}: {message}" if tensor is None else f"{path}: tensor {tensor}: {message}")
        self.path, self.tensor = path, tensor


def _read_header(path: str) -> tuple[dict, int]:
    """(tensor entries, offset of the data region) of one safetensors file, validated against its size."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointFileError(path, f"file is {size} bytes, too short for the 8-byte header length (truncated?)")
        (length,) = struct.unpack("<Q", prefix)
        if length > size - 8:
            raise CheckpointFileError(path, f"header length {length} exceeds the {size - 8} bytes after it (truncated?)")
        if length > _MAX_HEADER_BYTES:
            raise CheckpointFileError(path, f"header length {length} exceeds the {_MAX_HEADER_BYTES}-byte limit")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except ValueError as error:  # invalid JSON or invalid UTF-8
        raise CheckpointFileError(path, f"header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointFileError(path, "header is not a JSON object")
    header.pop("__metadata__", None)
    _check_entries(path, header, size - 8 - length)
    return header, 8 + length


def _check_entries(path: str, header: dict, data_size: int) -> None:
    """Every tensor's dtype is known, its byte span fits its shape, and the spans tile the data region exactly.

    The same rules the safetensors library enforces; a file cut short fails here
    naming the first tensor whose bytes are missing.
    """
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise CheckpointFileError(path, "entry lacks dtype, shape or data_offsets", name)
        if info["dtype"] not in _DTYPES:
            raise CheckpointFileError(path, f"unknown dtype {info['dtype']!r} (known: {', '.join(_DTYPES)})", name)
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise CheckpointFileError(path, f"shape {shape!r} is not a list of non-negative integers", name)
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
            raise CheckpointFileError(path, f"data_offsets {offsets!r} is not a pair of integers", name)
        spanned, needed = offsets[1] - offsets[0], math.prod(shape) * _DTYPES[info["dtype"]].itemsize
        if spanned != needed:
            message = f"data_offsets {offsets} span {spanned} bytes, but shape {shape} of {info['dtype']} needs {needed}"
            raise CheckpointFileError(path, message, name)
    end = 0
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
        begin, stop = info["data_offsets"]
        if begin != end:
            raise CheckpointFileError(path, f"data begins at byte {begin}, expected {end} (overlap or gap)", name)
        if stop > data_size:
            raise CheckpointFileError(path, f"data ends at byte {stop}, past the {data_size} data bytes (truncated?)", name)
        end = stop
    if end != data_size:
        raise CheckpointFileError(path, f"{data_size - end} bytes after the last tensor's data")


def _read_weight_map(index_path: str) -> dict[str, str]:
    """The index's tensor name -> shard file map."""
    try:
        with open(index_path) as f:
            index = json.load(f)
    except ValueError as error:  # invalid JSON or invalid UTF-8
        raise CheckpointFileError(index_path, f"is not valid JSON ({error})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointFileError(index_path, 'has no "weight_map" object of tensor name -> shard file')
    return weight_map


class CheckpointReader:
    """Lazy access to the tensors of a HF checkpoint directory (sharded or single file).

    Every header is validated at open (header bytes only, no tensor data is
    read); a malformed file raises ``CheckpointFileError`` naming it.
    """

    def __init__(self, checkpoint_dir: str | os.PathLike):
        checkpoint_dir = os.fspath(checkpoint_dir)
        index_path = os.path.join(checkpoint_dir, INDEX_FILE)
        if os.path.exists(index_path):
            weight_map = _read_weight_map(index_path)
            files = sorted(set(weight_map.values()))
            for name in files:
                if not os.path.isfile(os.path.join(checkpoint_dir, name)):
                    raise CheckpointFileError(index_path, f"weight_map names shard {name}, which does not exist")
        elif os.path.exists(os.path.join(checkpoint_dir, SINGLE_FILE)):
            weight_map, files = {}, [SINGLE_FILE]
        else:
            raise FileNotFoundError(f"no {INDEX_FILE} or {SINGLE_FILE} in {checkpoint_dir} (only safetensors is supported)")
        self._entries: dict[str, tuple[str, int, dict]] = {}
        for name in files:
            path = os.path.join(checkpoint_dir, name)
            header, data_start = _read_header(path)
            for tensor_name, info in header.items():
                if tensor_name in self._entries:
                    raise CheckpointFileError(path, f"also stored in {self._entries[tensor_name][0]}", tensor_name)
                self._entries[tensor_name] = (path, data_start, info)
        for tensor_name, name in weight_map.items():
            held = self._entries.get(tensor_name)
            if held is None or held[0] != os.path.join(checkpoint_dir, name):
                raise CheckpointFileError(index_path, f"weight_map puts it in {name}, which lacks it", tensor_name)

    def names(self) -> list[str]:
        """All tensor names in the checkpoint."""
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape the header gives tensor ``name``."""
        return tuple(self._entries[name][2]["shape"])

    def dtype(self, name: str) -> np.dtype:
        """The NumPy dtype the header gives tensor ``name``."""
        return _DTYPES[self._entries[name][2]["dtype"]]

    def file(self, name: str) -> str:
        """Path of the file holding tensor ``name``."""
        return self._entries[name][0]

    def get(self, name: str) -> np.ndarray:
        """A read-only memory-mapped view of one tensor (no copy until used)."""
        path, data_start, info = self._entries[name]
        begin, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        if end == begin:
            return np.zeros(info["shape"], dtype)
        raw = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start + begin, shape=(end - begin,))
        return raw.view(dtype).reshape(info["shape"])


def write_safetensors(path: str, tensors: list[tuple[str, np.ndarray]]) -> None:
    """Write (name, array) pairs to one safetensors file, in order."""
    header, offset = {}, 0
    for name, array in tensors:
        size = array.size * array.dtype.itemsize
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, array in tensors:
            f.write(np.ascontiguousarray(array).tobytes())
