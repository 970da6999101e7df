"""The front door for every file biascheck reads: regular files only (FIFOs, devices and folders
are refused by their type before anything is opened), a size limit per kind of file, and reads that
stream or map a file instead of copying it whole. Every refusal is one ``BiascheckError`` line
naming the file, the problem and the fix."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import stat
from collections.abc import Iterator, Mapping
from typing import BinaryIO

from pytest_biascheck.errors import BiascheckError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

#: Largest file of each kind, in bytes, and largest image and model input, in pixels (width x
#: height). ``[tool.biascheck] limits`` raises them, e.g. ``limits = { model = "64 GiB" }``.
DEFAULT_LIMITS: dict[str, int] = {
    "model": 16 * GiB,  # checkpoints, TorchScript and pickled modules, recipes' resume states
    "table": 2 * GiB,  # CSV and listing files, metadata CSVs
    "image": 256 * MiB,  # one image or part-mask file
    "results": 4 * GiB,  # results JSON files and cache entries
    "baseline": 256 * MiB,
    "answers": 256 * MiB,  # Crayon annotation files
    # a decoded image: 8192 x 8192; a header declaring more is refused as a decompression bomb
    "image_pixels": 2**26,
    "input_pixels": 2**24,  # a model's input_size H x W: 4096 x 4096
}
#: Config files are read before their ``limits`` are known, so theirs is fixed.
CONFIG_LIMIT = 16 * MiB
_PIXEL_KINDS = ("image_pixels", "input_pixels")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": KiB, "mib": MiB, "gib": GiB, "tib": 1 << 40}
_limits = dict(DEFAULT_LIMITS)


def set_limits(overrides: Mapping[str, int | str], source: str = "limits") -> None:
    """Use the defaults updated by ``overrides`` (``{"model": "64 GiB", "image_pixels": 10**9}``)
    from now on; ``source`` names where they came from in error messages."""
    limits = dict(DEFAULT_LIMITS)
    for kind, value in overrides.items():
        if kind not in DEFAULT_LIMITS:
            raise BiascheckError(
                f"{source}: unknown limit {kind!r}; choose from {', '.join(DEFAULT_LIMITS)}"
            )
        limits[kind] = _parse_amount(value, f"{source}.{kind}", pixels=kind in _PIXEL_KINDS)
    _limits.clear()
    _limits.update(limits)


def limit(kind: str) -> int:
    """The limit in force for ``kind`` (a key of :data:`DEFAULT_LIMITS`)."""
    return _limits[kind]


def check_file(path: str | os.PathLike, kind: str, what: str, hint: str = "check the path") -> int:
    """The size of ``path`` once it is known to be a regular file (links followed) within the
    limit of ``kind``; found by ``stat`` alone, so a FIFO or a device is never opened. ``what``
    names the file in messages ("model file"); ``hint`` is the fix when it does not exist."""
    text = os.fspath(path)
    if "\0" in text:
        raise BiascheckError(f"{what} path {text!r} contains a NUL byte; give the real file name")
    try:
        info = os.stat(text)
    except FileNotFoundError:
        link = f" (a link to {os.readlink(text)}, which is missing)" if os.path.islink(text) else ""
        raise BiascheckError(f"{what} {text} does not exist{link}; {hint}") from None
    except OSError as exc:
        raise BiascheckError(f"{what} {text} cannot be read ({exc.strerror}); {hint}") from None
    if not stat.S_ISREG(info.st_mode):
        raise BiascheckError(_not_regular(text, info.st_mode, what))
    _check_size(text, info.st_size, kind, what)
    return info.st_size


@contextlib.contextmanager
def open_file(
    path: str | os.PathLike, kind: str, what: str, hint: str = "check the path"
) -> Iterator[BinaryIO]:
    """:func:`check_file`, then the file opened for binary reading. It is opened non-blocking and
    checked again on the open descriptor, so a file swapped for a FIFO in between cannot hang."""
    check_file(path, kind, what, hint)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise BiascheckError(f"{what} {path} cannot be read ({exc.strerror}); {hint}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise BiascheckError(_not_regular(os.fspath(path), mode, what))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        yield fh


def read_bytes(
    path: str | os.PathLike, kind: str, what: str, hint: str = "check the path"
) -> bytes:
    """The whole file, at most the kind's limit (a file that grows past it while read, such as
    one under /proc that reports size 0, is refused too)."""
    with open_file(path, kind, what, hint) as fh:
        data = fh.read(_cap(kind) + 1)
    _check_size(os.fspath(path), len(data), kind, what)
    return data


def read_text(path: str | os.PathLike, kind: str, what: str, hint: str = "check the path") -> str:
    """The whole file as UTF-8 text; other encodings are one error naming the byte offset."""
    data = read_bytes(path, kind, what, hint)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BiascheckError(
            f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None


def sha256(path: str | os.PathLike, kind: str, what: str, extra: bytes = b"") -> str:
    """sha256 of the file's bytes followed by ``extra``, read in chunks (memory stays small)."""
    with open_file(path, kind, what) as fh:
        digest = hashlib.file_digest(fh, "sha256")
    digest.update(extra)
    return digest.hexdigest()


def format_size(size: int) -> str:
    """``2147483648`` -> ``"2.0 GiB"``."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _cap(kind: str) -> int:
    return CONFIG_LIMIT if kind == "config" else limit(kind)


def _check_size(path: str, size: int, kind: str, what: str) -> None:
    cap = _cap(kind)
    if size > cap:
        raise BiascheckError(
            f"{what} {path} is {format_size(size)}, over the {format_size(cap)} limit for "
            f"{kind} files; if it is genuine, raise it with [tool.biascheck] limits = "
            f'{{ {kind} = "{format_size(2 * size)}" }}'
        )


#: ``stat`` tests and how messages name what they find.
_TYPES = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(path: str, mode: int, what: str) -> str:
    found = next((name for test, name in _TYPES if test(mode)), "not a regular file")
    if found == "a folder":
        return f"{what} {path} is a folder; give the path of a file inside it"
    target = os.path.realpath(path)
    link = f" (a link to {target})" if target != os.path.abspath(path) else ""
    return f"{what} {path} is {found}{link}, not a regular file; give the path of a real file"


def _parse_amount(value: int | str, where: str, pixels: bool) -> int:
    """A positive count: an int, or for byte limits a string such as ``"64 GiB"``/``"500 MB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    found = (
        re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
        if isinstance(value, str)
        else None
    )
    unit = found[2].lower() if found else None
    if found and not pixels and unit in _UNITS and float(found[1]) > 0:
        return int(float(found[1]) * _UNITS[unit])
    expected = "a positive number of pixels" if pixels else 'a positive size such as "64 GiB"'
    raise BiascheckError(f"{where} must be {expected}, got {value!r}")
