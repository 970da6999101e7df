"""Checkpoints in the safetensors format: the tensors of a ``biascheck/1`` checkpoint with its
``arch``, ``arch_kwargs``, ``task`` and ``provenance`` as JSON in the header's ``__metadata__``.

The format (8-byte little-endian header length, a JSON header, raw little-endian tensor bytes)
holds no code, so any file can be opened. It is read here, not with the ``safetensors`` library,
so that the file goes through :mod:`pytest_biascheck.files` (regular files only, the size limit)
and its header is checked before a byte of weights is touched; the tensors are memory-mapped.
The ``safetensors`` library is the reference the tests check this reader and writer against.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pytest_biascheck import files
from pytest_biascheck.atomic import atomic_open
from pytest_biascheck.errors import BiascheckError

#: The format's dtype names (the safetensors specification's) and torch's dtypes.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
#: The library's own bound on the header (a larger one is refused before it is read).
MAX_HEADER = 100_000_000
#: Checkpoint entries kept as JSON text in ``__metadata__`` (its values must be strings).
ENTRIES = ("arch_kwargs", "task", "provenance")
FIX = "re-save it with pytest_biascheck.save_checkpoint(), or convert it with python -m pytest_biascheck convert"


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether the file starts like a safetensors file: a header length, then ``{``."""
    with files.open_file(path, "model", "model file") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


def save(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str], path: str | os.PathLike
) -> Path:
    """Write ``state_dict`` with string ``metadata`` as a safetensors file, atomically. Tensors are
    laid out by decreasing element size, so every one starts aligned to its element size."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        tensor = tensors[name]
        if tensor.dtype not in NAMES:
            raise BiascheckError(f"tensor {name} has dtype {tensor.dtype}, which safetensors lacks")
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little"))
        fh.write(text)
        for name in order:
            fh.write(tensors[name].reshape(-1).view(torch.uint8).numpy().tobytes())
    return path


def save_checkpoint_file(payload: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """A checkpoint dict (``format``, ``arch``, ``arch_kwargs``, ``state_dict``, ``task``,
    ``provenance``) as a safetensors file."""
    metadata = {"format": payload["format"], "arch": payload["arch"]}
    metadata |= {key: json.dumps(payload[key], allow_nan=False) for key in ENTRIES}
    return save(payload["state_dict"], metadata, path)


def load(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file. The header is checked in full first (known
    dtypes, whole-number shapes, offsets that tile the data exactly, as the format requires);
    the tensors then map the file copy-on-write, so nothing is read until it is used."""
    if sys.byteorder != "little":  # the format is little-endian; torch reads native order
        raise BiascheckError("safetensors files are read on little-endian machines only")
    with files.open_file(path, "model", "model file") as fh:
        size = os.fstat(fh.fileno()).st_size
        length = int.from_bytes(fh.read(8), "little")
        if size < 8 or length < 2 or length > min(size - 8, MAX_HEADER):
            raise BiascheckError(
                f"model file {path} is not a safetensors file (its header length {length} does "
                f"not fit the file's {size} bytes); {FIX}"
            )
        raw = fh.read(length)
        entries, metadata = _header(path, raw, size - 8 - length)
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    start = 8 + length
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        count = math.prod(shape)
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        itemsize = torch.empty((), dtype=dtype).element_size()
        if (start + begin) % itemsize:  # unaligned (a foreign writer): copy the bytes
            data = bytearray(mapped[start + begin : start + end])
            tensors[name] = torch.frombuffer(data, dtype=dtype).reshape(shape)
        else:
            flat = torch.frombuffer(mapped, dtype=dtype, count=count, offset=start + begin)
            tensors[name] = flat.reshape(shape)
    return tensors, metadata


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict of a biascheck safetensors file (for ``model.check_payload``); a file
    of bare weights (no biascheck metadata) is refused with the ``convert`` command to run."""
    tensors, metadata = load(path)
    if "format" not in metadata:
        raise BiascheckError(
            f"model file {path} holds safetensors weights but no biascheck task; convert it: "
            f"python -m pytest_biascheck convert {path} --arch ARCH --attributes A,B --out "
            f"{Path(path).with_suffix('.biascheck.safetensors').name}"
        )
    payload: dict[str, Any] = {"format": metadata["format"], "state_dict": tensors}
    if "arch" in metadata:
        payload["arch"] = metadata["arch"]
    for key in ENTRIES:
        if key in metadata:
            try:
                payload[key] = json.loads(metadata[key])
            except ValueError:
                raise BiascheckError(
                    f"model file {path}: metadata {key} is not JSON; {FIX}"
                ) from None
    return payload


def _header(
    path: str | os.PathLike, raw: bytes, data_size: int
) -> tuple[dict[str, tuple[torch.dtype, list[int], int, int]], dict[str, str]]:
    """Parsed and checked header: ``name -> (dtype, shape, begin, end)`` and the metadata."""

    def refuse(problem: str) -> BiascheckError:
        return BiascheckError(f"model file {path}: safetensors header {problem}; {FIX}")

    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise refuse("is not JSON") from None
    if not isinstance(header, dict):
        raise refuse(f"is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise refuse("__metadata__ is not a table of strings")
    entries = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise refuse(f"entry {name!r} is not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise refuse(f"entry {name!r} has unknown dtype {dtype!r}")
        if not _naturals(shape) or not _naturals(offsets) or len(offsets) != 2:
            raise refuse(f"entry {name!r} has a shape or data_offsets that are not whole numbers")
        size = math.prod(shape) * torch.empty((), dtype=DTYPES[dtype]).element_size()
        if offsets[1] - offsets[0] != size:
            raise refuse(f"entry {name!r} spans {offsets} but its shape {shape} needs {size} bytes")
        entries[name] = (DTYPES[dtype], shape, offsets[0], offsets[1])
    end = 0
    for name, (_, _, begin, stop) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin != end:
            raise refuse(f"entry {name!r} starts at byte {begin}, not {end} (a gap or overlap)")
        end = stop
    if end != data_size:
        raise refuse(f"describes {end} bytes of tensors but the file holds {data_size}")
    return entries, metadata


def _naturals(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62 for v in values
    )
