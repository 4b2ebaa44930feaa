"""Minimal safetensors reader/writer on numpy memory maps.

Reading maps each file and views one tensor at a time (bfloat16 through
ml_dtypes), so a checkpoint is never loaded whole into host memory; writing
streams tensors to disk one by one. Only the safetensors format is read or
written: no pickle.
"""

from __future__ import annotations

import json
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


def _read_header(path: str) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


class CheckpointReader:
    """Lazy access to the tensors of a HF checkpoint directory (sharded or single file)."""

    def __init__(self, checkpoint_dir: str | os.PathLike):
        checkpoint_dir = os.fspath(checkpoint_dir)
        index_path = os.path.join(checkpoint_dir, INDEX_FILE)
        if os.path.exists(index_path):
            with open(index_path) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif os.path.exists(os.path.join(checkpoint_dir, SINGLE_FILE)):
            files = [SINGLE_FILE]
        else:
            raise FileNotFoundError(f"no {INDEX_FILE} or {SINGLE_FILE} in {checkpoint_dir} (only safetensors is supported)")
        self._entries: dict[str, tuple[str, int, dict]] = {}
        for name in files:
            path = os.path.join(checkpoint_dir, name)
            header, data_start = _read_header(path)
            for tensor_name, info in header.items():
                self._entries[tensor_name] = (path, data_start, info)

    def names(self) -> list[str]:
        """All tensor names in the checkpoint."""
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name][2]["shape"])

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
