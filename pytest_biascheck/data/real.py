"""Loaders for the real datasets' on-disk layouts: CelebA, CelebAMask-HQ, Waterbirds and CSV + folder,
and group columns joined onto any dataset from a metadata CSV.

Text files are parsed and checked in ``__init__`` (a bad line is reported with its file and line
number); images and masks are read lazily, one item at a time, and resized to ``image_size``. Every
file is read through :mod:`pytest_biascheck.files`; image paths that leave the data folder, NUL
bytes and images whose header declares more than ``limits.image_pixels`` are refused.
"""

from __future__ import annotations

import difflib
import io
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from pytest_biascheck import files
from pytest_biascheck.data.base import BiasDataset, Sample
from pytest_biascheck.data.regions import CELEBA_REGIONS, PART_NAMES, REGION_NAMES, parts_to_regions
from pytest_biascheck.data.synth_common import SPLITS
from pytest_biascheck.errors import BiascheckError

ImageSize = int | tuple[int, int]

CELEBA_FILES = (
    "img_align_celeba/",
    "list_attr_celeba.txt",
    "list_eval_partition.txt",
    "list_landmarks_align_celeba.txt",
)
CELEBAMASK_HQ_FILES = (
    "CelebA-HQ-img/",
    "CelebAMask-HQ-attribute-anno.txt",
    "CelebAMask-HQ-mask-anno/",
)
WATERBIRDS_COLUMNS = ("img_filename", "y", "split", "place")
#: CelebAMask-HQ part masks are 512x512 and stored 2000 images to a folder.
MASK_SIZE = (512, 512)
MASKS_PER_FOLDER = 2000
#: The Attention-IoU paper's random train/val split fractions for CelebAMask-HQ (the rest is test),
#: used when the root lacks the mapping file below.
HQ_SPLIT_FRACTIONS = (0.7, 0.15)
#: CelebAMask-HQ's map from its image numbers to CelebA file names (columns idx, orig_idx,
#: orig_file): with it an HQ image takes its CelebA image's official partition.
HQ_MAPPING = "CelebA-HQ-to-CelebA-mapping.txt"
#: Last file number of CelebA's official train and val partitions (list_eval_partition.txt:
#: 000001-162770 train, 162771-182637 val, 182638-202599 test).
CELEBA_PARTITION_ENDS = (162770, 182637)


# ---------------------------------------------------------------------------------------------
# Whitespace-separated listing files (CelebA, CelebAMask-HQ)


@dataclass(frozen=True)
class _Listing:
    """A parsed listing file: image names, numeric columns and where each row sits in the file."""

    path: Path
    header: tuple[str, ...]
    names: np.ndarray
    values: np.ndarray
    first_line: int

    def where(self, row: int) -> str:
        """``"<file> line <n>"`` for data row ``row``."""
        return f"{self.path} line {self.first_line + int(row)}"

    def field(self, row: int, column: int) -> str:
        """The raw text of value ``column`` on data row ``row`` (for error messages only)."""
        with files.open_file(self.path, "table", "listing") as fh:
            for _ in range(self.first_line - 1 + int(row)):
                fh.readline()
            return fh.readline().decode(errors="replace").split()[column + 1]

    def check_values(self, allowed: Sequence[float] | None, expected: str) -> None:
        """Raise on the first value outside ``allowed`` (None: any finite number)."""
        bad = ~np.isfinite(self.values) if allowed is None else ~np.isin(self.values, allowed)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            column = self.header[col] if self.header else f"column {col + 2}"
            raise BiascheckError(
                f"{self.where(row)}: {column} is {self.field(row, col)!r}, expected {expected}"
            )


def _fields_per_line(raw: bytes) -> np.ndarray:
    """Number of whitespace-separated fields on each line of ``raw`` (vectorised over bytes)."""
    data = np.frombuffer(raw, dtype=np.uint8)
    if data.size == 0:
        return np.zeros(0, dtype=np.int64)
    newline = data == 10
    space = newline | (data == 32) | (data == 9) | (data == 13)
    starts = ~space
    starts[1:] &= space[:-1]
    bounds = np.concatenate(([0], np.flatnonzero(newline[:-1]) + 1, [data.size]))
    return np.diff(np.searchsorted(np.flatnonzero(starts), bounds))


def _read_listing(path: Path, *, counted: bool, width: int | None = None, layout: str) -> _Listing:
    """Parse ``name v1 v2 ...`` lines; ``counted`` files start with an image count and a name line.

    ``width`` is the number of values per line (for counted files: the names on line 2).
    """
    raw = _read_table(path, layout)
    head = raw.split(b"\n", 2) if counted else []
    header: tuple[str, ...] = ()
    first_line = 1
    if counted:
        count = head[0].split()
        if len(count) != 1 or not count[0].isdigit():
            found = head[0][:40].decode(errors="replace")
            raise BiascheckError(f"{path} line 1: expected the number of images, found {found!r}")
        header = tuple(head[1].decode().split()) if len(head) > 1 else ()
        if not header:
            raise BiascheckError(f"{path} line 2: expected the column names separated by spaces")
        width = len(header) if width is None else width
        if len(header) != width:
            raise BiascheckError(
                f"{path} line 2: expected {width} column names, found {len(header)}: {' '.join(header)}"
            )
        first_line = 3
    fields = _fields_per_line(raw)[first_line - 1 :]
    filled = np.flatnonzero(fields)
    fields = fields[: filled[-1] + 1 if filled.size else 0]  # trailing blank lines are fine
    bad = np.flatnonzero(fields != width + 1)
    if bad.size:
        raise BiascheckError(
            f"{path} line {first_line + bad[0]}: expected {width + 1} fields (image name and "
            f"{width} values), found {fields[bad[0]]}"
        )
    if counted and int(count[0]) != fields.size:
        raise BiascheckError(
            f"{path} line 1: the header says {int(count[0])} images but the file lists {fields.size}; "
            "fix the count or restore the missing lines"
        )
    table = pd.read_csv(
        io.BytesIO(raw),
        sep=r"\s+",
        header=None,
        skiprows=first_line - 1,
        names=range(width + 1),
        dtype={0: str},
        na_filter=False,
        engine="c",
    )
    values = table.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    names = table[0].to_numpy(str)
    _check_unique(names, path, first_line)
    return _Listing(path, header, names, values.reshape(len(names), width), first_line)


def _check_unique(names: np.ndarray, path: Path, first_line: int) -> None:
    """Raise on the first image listed twice."""
    dup = np.flatnonzero(pd.Index(names).duplicated())
    if dup.size:
        raise BiascheckError(f"{path} line {first_line + dup[0]}: {names[dup[0]]} is listed twice")


def _align(base: _Listing, other: _Listing) -> np.ndarray:
    """Row of ``other`` for each row of ``base``; an error when the two files list different images."""
    rows = pd.Index(other.names).get_indexer(base.names)
    _check_listed(base, rows, other)
    _check_listed(other, pd.Index(base.names).get_indexer(other.names), base)
    return rows


def _check_listed(listing: _Listing, rows: np.ndarray, other: _Listing) -> None:
    """Raise on the first image of ``listing`` that ``other`` lacks (``rows`` < 0)."""
    missing = np.flatnonzero(rows < 0)
    if missing.size:
        raise BiascheckError(
            f"{listing.where(missing[0])}: {listing.names[missing[0]]} is not in {other.path}; "
            "the two files must list the same images"
        )


def _select_columns(
    available: Sequence[str], wanted: Sequence[str] | str | None, source: str
) -> list[int]:
    """Positions of ``wanted`` among ``available`` (all when None); unknown names suggest close ones."""
    if wanted is None:
        return list(range(len(available)))
    wanted = (wanted,) if isinstance(wanted, str) else tuple(wanted)
    for name in wanted:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
            hint = (
                f"did you mean {', '.join(close)}?" if close else f"it has {', '.join(available)}"
            )
            raise BiascheckError(f"{source}: no column {name!r}; {hint}")
    return [list(available).index(name) for name in wanted]


def _split_rows(codes: np.ndarray, split: str | None) -> np.ndarray:
    """Rows whose split code (0/1/2 = train/val/test) is ``split``; all rows when ``split`` is None."""
    if split is None:
        return np.arange(len(codes))
    if split not in SPLITS:
        raise BiascheckError(f"split={split!r}: choose one of {', '.join(SPLITS)}, or all")
    return np.flatnonzero(codes == SPLITS.index(split))


# ---------------------------------------------------------------------------------------------
# CSV files (Waterbirds, CsvFolder)


def _read_table(path: Path, layout: str) -> bytes:
    """The bytes of a listing or CSV file (through the front door); a NUL byte, which no text
    file holds, is refused with its line."""
    raw = files.read_bytes(path, "table", "listing", layout)
    nul = raw.find(b"\0")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise BiascheckError(f"{path} line {line}: a NUL byte; text files hold none, fix that line")
    return raw


def _read_csv(path: Path, layout: str) -> pd.DataFrame:
    """Every cell as stripped text; a line with more fields than the header is an error naming it.

    The header is read as a data row so that pandas never turns an over-long first row into an index.
    """
    raw = _read_table(path, layout)
    try:
        table = pd.read_csv(io.BytesIO(raw), header=None, dtype=object, keep_default_na=False)
    except UnicodeDecodeError as err:
        raise BiascheckError(
            f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8"
        ) from None
    except pd.errors.EmptyDataError:
        raise BiascheckError(f"{path} is empty; {layout}") from None
    except pd.errors.ParserError as err:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        detail = (
            f" line {found[2]}: expected {found[1]} fields like the header, found {found[3]}"
            if found
            else f": {str(err).strip()}"
        )
        raise BiascheckError(f"{path}{detail}") from None
    table = table.apply(lambda column: column.str.strip())
    header = table.iloc[0].tolist()
    repeated = pd.Index(header).duplicated()
    if repeated.any():
        raise BiascheckError(f"{path} line 1: column {header[repeated.argmax()]!r} appears twice")
    return table.iloc[1:].set_axis(header, axis=1).reset_index(drop=True)


def _csv_column(frame: pd.DataFrame, name: str, path: Path, fix: str) -> pd.Series:
    """Column ``name``, or an error naming the closest existing column."""
    if name not in frame.columns:
        close = difflib.get_close_matches(name, list(frame.columns), n=1, cutoff=0.0)
        raise BiascheckError(
            f"{path} line 1: no column {name!r} (closest: {close[0] if close else 'none'!r}); {fix}"
        )
    return frame[name]


def _csv_binary(column: pd.Series, path: Path, hint: str = "") -> np.ndarray:
    """0/1, -1/1 or true/false text -> bool; an error names the first bad line (and ``hint``)."""
    text = column.str.lower()
    number = pd.to_numeric(text, errors="coerce").fillna(text.map({"true": 1.0, "false": 0.0}))
    bad = np.flatnonzero(~number.isin((-1.0, 0.0, 1.0)).to_numpy())
    if bad.size == 0 and (number == 0).any() and (number == -1).any():
        bad = np.flatnonzero((number == -1).to_numpy())
    if bad.size:
        raise BiascheckError(
            f"{path} line {bad[0] + 2}: {column.name} is {column.iloc[bad[0]]!r}; expected one binary "
            f"coding for the whole column: 0/1, -1/1 or true/false{hint}"
        )
    return (number == 1).to_numpy()


def _csv_codes(column: pd.Series, path: Path) -> tuple[np.ndarray, tuple]:
    """Integer codes of a group column, levels in sorted order (numeric when every value is a number)."""
    empty = np.flatnonzero((column == "").to_numpy())
    if empty.size:
        raise BiascheckError(
            f"{path} line {empty[0] + 2}: {column.name} is empty; give every row a value"
        )
    number = pd.to_numeric(column, errors="coerce")
    codes, levels = pd.factorize(number if number.notna().all() else column, sort=True)
    return codes.astype(np.int64), tuple(levels.tolist())


# ---------------------------------------------------------------------------------------------
# Images


def _image_size(image_size: ImageSize) -> tuple[int, int]:
    """``(h, w)`` from an int (square) or a pair."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise BiascheckError(
            f"image_size={image_size!r}: give a positive int or an (height, width) pair"
        )
    return size


def _open(path: Path, listed_at: str) -> Image.Image:
    """Open and decode an image file. A missing or unreadable one, one whose header declares more
    than ``limits.image_pixels`` (a decompression bomb: refused before decoding) and one that
    does not decode are each one error naming the file and its listing line."""
    where = f"{listed_at}: image"
    with files.open_file(path, "image", where, "restore it or remove that line") as fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(fh)
                _check_pixels(path, where, image.width * image.height)
                image.load()
        except Image.DecompressionBombError as err:  # over Pillow's own, higher, limit
            found = re.search(r"\((\d+) pixels\)", str(err))
            _check_pixels(path, where, int(found[1]) if found else files.limit("image_pixels") + 1)
            raise
        except BiascheckError:
            raise
        except Exception as err:  # decoders of untrusted bytes raise many types
            raise BiascheckError(
                f"{where} {path} cannot be decoded ({type(err).__name__}: {err}); replace the file"
            ) from None
    return image


def _check_pixels(path: Path, where: str, pixels: int) -> None:
    cap = files.limit("image_pixels")
    if pixels > cap:
        raise BiascheckError(
            f"{where} {path} declares {pixels} pixels, over the limit of {cap} (a decompression "
            "bomb?); replace it, or raise [tool.biascheck] limits.image_pixels if it is genuine"
        )


def _check_names(names: np.ndarray, root: Path, listing: Path, lines: np.ndarray) -> None:
    """Refuse image paths that could leave the data folder (absolute, or with a '..' part) or
    that hold a NUL byte, naming the first such listing line."""
    text = pd.Series(names, dtype=object).astype(str)
    escapes = text.str.contains(r"(?:^|/)\.\.(?:/|$)") | text.str.startswith("/")
    nul = text.str.contains("\0", regex=False)
    bad = np.flatnonzero((escapes | nul).to_numpy())
    if bad.size:
        row = bad[0]
        problem = "holds a NUL byte" if nul.iloc[row] else f"leaves the data folder {root}"
        raise BiascheckError(
            f"{listing} line {lines[row]}: image path {text.iloc[row]!r} {problem}; list paths "
            "relative to that folder, without '..'"
        )


class _ImageTable(BiasDataset):
    """Shared item loading: image files named by a table, with per-row labels, groups and landmarks."""

    #: Which images were taken and why (printed in the run header), and whether they are a
    #: held-out split (False: every image of the source, so a recipe would train on them too).
    split_rule: str = ""
    held_out: bool = True

    def notes(self) -> list[str]:
        """What the run should say about this data: its split rule."""
        return [self.split_rule] if self.split_rule else []

    def image_files(self) -> list[str]:
        """Every image's resolved path (recipes refuse to train on the images they evaluate)."""
        return [os.path.realpath(self.image_path(i)) for i in range(len(self))]

    def __init__(
        self,
        image_root: Path,
        files: np.ndarray,
        listing: Path,
        lines: np.ndarray,
        image_size: ImageSize,
        labels: np.ndarray,
        groups: np.ndarray | None = None,
        landmarks: np.ndarray | None = None,
    ) -> None:
        self.image_size = _image_size(image_size)
        _check_names(files, image_root, listing, lines)
        self._image_root = image_root
        self._files = files
        self._listing = listing
        self._lines = lines
        self._labels = torch.as_tensor(labels, dtype=torch.float32)
        self._groups = None if groups is None else torch.as_tensor(groups, dtype=torch.int64)
        self._landmarks = (
            None if landmarks is None else torch.as_tensor(landmarks, dtype=torch.float32)
        )

    def __len__(self) -> int:
        return len(self._files)

    def image_path(self, index: int) -> Path:
        """File of item ``index`` (joins per-image results back to the dataset's own metadata)."""
        return self._image_root / self._files[index]

    def _inside_root(self, index: int) -> Path:
        """The image's path once links are resolved, refused when it leads out of the data folder."""
        path = self.image_path(index)
        root = os.path.realpath(self._image_root)
        target = os.path.realpath(path)
        if os.path.commonpath([root, target]) != root:
            raise BiascheckError(
                f"{self.listed_at(index)}: image {path} is a link to {target}, outside the data "
                f"folder {root}; copy the image into the folder"
            )
        return path

    def image_ids(self) -> np.ndarray:
        """Each image's path as the listing names it (e.g. ``000001.jpg``)."""
        return np.asarray(self._files, dtype=str)

    def listed_at(self, index: int) -> str:
        """``"<listing file> line <n>"`` where item ``index`` is described."""
        return f"{self._listing} line {self._lines[index]}"

    def __getitem__(self, index: int) -> Sample:
        index = range(len(self))[index]
        image = _open(self._inside_root(index), self.listed_at(index)).convert("RGB")
        pixels = TF.pil_to_tensor(image).float().div_(255)
        resized = TF.resize(
            pixels, list(self.image_size), InterpolationMode.BILINEAR, antialias=True
        )
        sample: Sample = {
            "image": resized.clamp_(0, 1),
            "labels": self._labels[index].clone(),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if self._groups is not None:
            sample["groups"] = self._groups[index].clone()
        if self._landmarks is not None:
            scale = torch.tensor(
                [self.image_size[1] / image.width, self.image_size[0] / image.height]
            )
            sample["landmarks"] = self._landmarks[index] * scale
        return sample


# ---------------------------------------------------------------------------------------------
# The four layouts


class CelebA(_ImageTable):
    """Aligned CelebA: 178x218 images, 40 {-1, 1} attributes, official partition, 5 landmarks."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "test",
        image_size: ImageSize = 64,
        attributes: Sequence[str] | None = None,
    ) -> None:
        root = Path(root)
        layout = f"a CelebA root holds {', '.join(CELEBA_FILES)}"
        attrs = _read_listing(root / CELEBA_FILES[1], counted=True, layout=layout)
        attrs.check_values((-1, 1), "-1 or 1")
        partition = _read_listing(root / CELEBA_FILES[2], counted=False, width=1, layout=layout)
        partition.check_values((0, 1, 2), "0, 1 or 2 (train, val, test)")
        marks = _read_listing(root / CELEBA_FILES[3], counted=True, width=10, layout=layout)
        marks.check_values(None, "a number")
        if not (root / CELEBA_FILES[0]).is_dir():
            raise BiascheckError(f"{root / CELEBA_FILES[0]} is not a folder; {layout}")
        keep = _split_rows(partition.values[_align(attrs, partition), 0], split)
        self.split_rule, self.held_out = _rule(
            split, len(keep), len(attrs.names), f"CelebA's official partition ({CELEBA_FILES[2]})"
        )
        columns = _select_columns(attrs.header, attributes, f"{attrs.path} line 2")
        self.attributes = tuple(attrs.header[c] for c in columns)
        super().__init__(
            root / CELEBA_FILES[0],
            attrs.names[keep],
            attrs.path,
            attrs.first_line + keep,
            image_size,
            labels=attrs.values[keep][:, columns] == 1,
            landmarks=marks.values[_align(attrs, marks)[keep]].reshape(-1, 5, 2),
        )


class CelebAMaskHQ(_ImageTable):
    """CelebAMask-HQ: 1024x1024 images, 40 attributes, per-part 512x512 masks grouped into regions.

    Split: with ``CelebA-HQ-to-CelebA-mapping.txt`` in the root (CelebAMask-HQ ships it), each image
    takes the official CelebA partition of the CelebA image it was made from, so a model trained
    on CelebA's train partition is evaluated on images it never saw. Without it, the
    Attention-IoU paper's split: a seeded random 70/15/15 permutation of the listed images
    (``numpy.random.RandomState(split_seed).permutation``, as the authors' code draws it).
    """

    region_names = REGION_NAMES
    default_scope = {"regions": CELEBA_REGIONS}  # noqa: RUF012 - read-only class default

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "test",
        image_size: ImageSize = 64,
        attributes: Sequence[str] | None = None,
        split_seed: int = 0,
    ) -> None:
        root = Path(root)
        layout = f"a CelebAMask-HQ root holds {', '.join(CELEBAMASK_HQ_FILES)}"
        attrs = _read_listing(root / CELEBAMASK_HQ_FILES[1], counted=True, layout=layout)
        attrs.check_values((-1, 1), "-1 or 1")
        for folder in (CELEBAMASK_HQ_FILES[0], CELEBAMASK_HQ_FILES[2]):
            if not (root / folder).is_dir():
                raise BiascheckError(f"{root / folder} is not a folder; {layout}")
        named = pd.Series(attrs.names).str.fullmatch(r"\d+\.jpg").to_numpy()
        if not named.all():
            row = int(np.argmin(named))
            raise BiascheckError(
                f"{attrs.where(row)}: image name {str(attrs.names[row])!r} is not <number>.jpg"
            )
        n = len(attrs.names)
        if (root / HQ_MAPPING).is_file():
            codes = _celeba_partition(root / HQ_MAPPING, attrs)
            how = f"CelebA's official partition of the source images ({HQ_MAPPING})"
        else:
            order = np.random.RandomState(split_seed).permutation(n)
            ends = (int(n * HQ_SPLIT_FRACTIONS[0]), int(n * sum(HQ_SPLIT_FRACTIONS)))
            codes = np.empty(n, dtype=np.int64)
            codes[order] = np.searchsorted(ends, np.arange(n), side="right")
            how = (
                f"a random 70/15/15 split (seed {split_seed}), not CelebA's partition: add "
                f"{HQ_MAPPING} to the root to use it"
            )
        keep = _split_rows(codes, split)
        self.split_rule, self.held_out = _rule(split, len(keep), n, how)
        columns = _select_columns(attrs.header, attributes, f"{attrs.path} line 2")
        self.attributes = tuple(attrs.header[c] for c in columns)
        self._mask_root = root / CELEBAMASK_HQ_FILES[2]
        self._ids = pd.Series(attrs.names[keep]).str[:-4].astype(np.int64).to_numpy()
        super().__init__(
            root / CELEBAMASK_HQ_FILES[0],
            attrs.names[keep],
            attrs.path,
            attrs.first_line + keep,
            image_size,
            labels=attrs.values[keep][:, columns] == 1,
        )

    def part_map(self, index: int) -> torch.Tensor:
        """Full-size int64 ``[512, 512]`` part label map of item ``index``; later parts overwrite earlier."""
        image_id = int(self._ids[index])
        folder = self._mask_root / str(image_id // MASKS_PER_FOLDER)
        label = np.zeros(MASK_SIZE[::-1], dtype=np.int64)
        found = False
        for part, name in enumerate(PART_NAMES[1:], start=1):
            path = folder / f"{image_id:05d}_{name}.png"
            if not path.is_file():
                continue
            mask = _open(path, f"part mask of {self.listed_at(index)}")
            if mask.size != MASK_SIZE:
                raise BiascheckError(
                    f"{path} is {mask.width}x{mask.height}; CelebAMask-HQ part masks are "
                    f"{MASK_SIZE[0]}x{MASK_SIZE[1]} whatever the image size, replace it with "
                    "the original file (docs/data.md)"
                )
            label[np.asarray(mask.convert("L")) > 127] = part
            found = True
        if not found:
            raise BiascheckError(
                f"{folder} has no part masks for image {image_id} ({self.listed_at(index)}); expected "
                f"files like {folder / f'{image_id:05d}_skin.png'}"
            )
        return torch.from_numpy(label)

    def __getitem__(self, index: int) -> Sample:
        sample = super().__getitem__(index)
        parts = TF.resize(
            self.part_map(int(sample["index"]))[None],
            list(self.image_size),
            InterpolationMode.NEAREST_EXACT,
        )[0]
        sample["parts"] = parts
        sample["masks"] = parts_to_regions(parts)
        return sample


class Waterbirds(_ImageTable):
    """Waterbirds (``metadata.csv``): label Waterbird (y), protected group place (1 = water)."""

    attributes = ("Waterbird",)
    group_names = ("place",)

    def __init__(
        self, root: str | os.PathLike, split: str | None = "test", image_size: ImageSize = 64
    ) -> None:
        root = Path(root)
        path = root / "metadata.csv"
        fix = f"Waterbirds metadata needs the columns {', '.join(WATERBIRDS_COLUMNS)}"
        frame = _read_csv(path, f"a Waterbirds root holds metadata.csv ({fix}) and the images")
        files, y, split_text, place = (_csv_column(frame, c, path, fix) for c in WATERBIRDS_COLUMNS)
        codes = pd.to_numeric(split_text, errors="coerce")
        bad = np.flatnonzero(~codes.isin((0, 1, 2)).to_numpy())
        if bad.size:
            raise BiascheckError(
                f"{path} line {bad[0] + 2}: split is {split_text.iloc[bad[0]]!r}, expected 0, 1 or 2 "
                "(train, val, test)"
            )
        keep = _split_rows(codes.to_numpy(), split)
        self.split_rule, self.held_out = _rule(
            split, len(keep), len(frame), f"the split column of {path.name}"
        )
        self.group_levels: dict[str, tuple] = {"place": (0, 1)}
        super().__init__(
            root,
            files.to_numpy(str)[keep],
            path,
            keep + 2,
            image_size,
            labels=_csv_binary(y, path)[keep, None],
            groups=_csv_binary(place, path)[keep, None],
        )


class CsvFolder(_ImageTable):
    """A generic CSV: an image-path column, binary attribute columns, optional group and split columns."""

    def __init__(
        self,
        csv_path: str | os.PathLike,
        image_root: str | os.PathLike,
        image_size: ImageSize = 64,
        attributes: Sequence[str] | str | None = None,
        group_columns: Sequence[str] = (),
        split: str | None = None,
        image_column: str = "image",
        split_column: str = "split",
    ) -> None:
        path = Path(csv_path)
        frame = _read_csv(path, "give the CSV file of image paths and labels")
        files = _csv_column(frame, image_column, path, "pass image_column=<the image path column>")
        group_columns = (group_columns,) if isinstance(group_columns, str) else tuple(group_columns)
        if attributes is None:
            reserved = {image_column, split_column, *group_columns}
            attributes = [c for c in frame.columns if c not in reserved]
        attributes = (attributes,) if isinstance(attributes, str) else tuple(attributes)
        if not attributes:
            raise BiascheckError(
                f"{path} line 1: no attribute columns; add at least one 0/1 column"
            )
        fix = "name the CSV's columns: csv:PATH,attributes=A+B,groups=G"
        hint = (
            f"; if it is a group column (any number of values), name it: csv:{path},groups=<name>"
        )
        labels = np.stack(
            [_csv_binary(_csv_column(frame, a, path, fix), path, hint) for a in attributes], 1
        )
        coded = [_csv_codes(_csv_column(frame, g, path, fix), path) for g in group_columns]
        self.group_levels: dict[str, tuple] = {
            g: levels for g, (_, levels) in zip(group_columns, coded, strict=True)
        }
        keep = np.arange(len(frame))
        if split is not None:
            values = _csv_column(frame, split_column, path, "add a split column or use split=all")
            accepted = {split, str(SPLITS.index(split))} if split in SPLITS else {split}
            keep = np.flatnonzero(values.isin(accepted).to_numpy())
            if keep.size == 0:
                raise BiascheckError(
                    f"{path}: no row has {split_column}={split!r}; the column holds "
                    f"{', '.join(sorted(values.unique())[:10])}"
                )
        how = (
            f"the {split_column} column of {path.name}"
            if split is not None
            else f"{path.name} has no {split_column} column"
        )
        self.split_rule, self.held_out = _rule(split, len(keep), len(frame), how)
        self.attributes = attributes
        self.group_names = group_columns
        groups = np.stack([codes for codes, _ in coded], 1)[keep] if coded else None
        super().__init__(
            Path(image_root),
            files.to_numpy(str)[keep],
            path,
            keep + 2,
            image_size,
            labels=labels[keep],
            groups=groups,
        )


class MetadataGroups(BiasDataset):
    """A dataset plus protected-group columns read from a metadata CSV and joined on the image id.

    Every column but ``id_column`` becomes a group column (values coded in sorted order, as in
    :class:`CsvFolder`). A row matches an image when its id equals the image's id (the path as the
    data lists it, e.g. CelebA's ``000001.jpg``; the index for synthetic data) or that path's file
    name. Rows for images outside the evaluated split are ignored; an image without a row is an error.
    """

    def __init__(
        self, dataset: BiasDataset, csv_path: str | os.PathLike, id_column: str = "image_id"
    ) -> None:
        path = Path(csv_path)
        frame = _read_csv(path, f"give a CSV with an {id_column!r} column and group columns")
        fix = f"name the id column with metadata_id (now {id_column!r})"
        ids = _csv_column(frame, id_column, path, fix)
        repeated = ids.duplicated()
        if repeated.any():
            line = int(np.flatnonzero(repeated.to_numpy())[0]) + 2
            raise BiascheckError(f"{path} line {line}: id {ids[repeated].iloc[0]!r} appears twice")
        columns = [c for c in frame.columns if c != id_column]
        clash = [c for c in columns if c in dataset.attributes or c in dataset.group_names]
        if not columns or clash:
            problem = f"column {clash[0]!r} is already in the data" if clash else "no group column"
            raise BiascheckError(f"{path} line 1: {problem}; keep {id_column!r} plus new groups")
        rows = self._rows(pd.Index(ids), dataset.image_ids(), path, id_column)
        coded = [_csv_codes(frame[c], path) for c in columns]
        self.base = dataset
        self.attributes = dataset.attributes
        self.region_names = dataset.region_names
        self.default_scope = dataset.default_scope
        self.group_names = (*dataset.group_names, *columns)
        self.group_levels = {
            **dataset.group_levels,
            **{c: levels for c, (_, levels) in zip(columns, coded, strict=True)},
        }
        self._groups = torch.from_numpy(np.stack([codes for codes, _ in coded], 1)[rows])
        self.sha256 = files.sha256(path, "table", "metadata CSV", id_column.encode())

    @staticmethod
    def _rows(ids: pd.Index, images: np.ndarray, path: Path, id_column: str) -> np.ndarray:
        """Row of the CSV for every image: by its id, else by its file name."""
        rows = ids.get_indexer(images)
        by_name = ids.get_indexer([PurePosixPath(i).name for i in images])
        rows = np.where(rows >= 0, rows, by_name)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            raise BiascheckError(
                f"{path}: no {id_column!r} row for {missing.size} of {len(images)} images (first: "
                f"{str(images[missing[0]])!r}); add their rows, with the id as the data lists the image"
            )
        return rows

    def __len__(self) -> int:
        return len(self.base)

    def image_ids(self) -> np.ndarray:
        """The ids of the wrapped data."""
        return self.base.image_ids()

    def notes(self) -> list[str]:
        """What the wrapped data reports about itself."""
        return self.base.notes()

    @property
    def held_out(self) -> bool:
        """Whether the wrapped data is a held-out split."""
        return getattr(self.base, "held_out", True)

    def image_files(self) -> list[str] | None:
        """The wrapped data's image files (None for data without files)."""
        files_of = getattr(self.base, "image_files", None)
        return files_of() if files_of else None

    def __getitem__(self, index: int) -> Sample:
        sample = self.base[index]
        own = self._groups[range(len(self))[index]]
        sample["groups"] = torch.cat([sample["groups"], own]) if "groups" in sample else own.clone()
        return sample


def csv_folder(
    path: str | os.PathLike,
    split: str | None = "test",
    image_size: ImageSize = 64,
    groups: str | Sequence[str] = (),
    attributes: str | Sequence[str] | None = None,
    image: str = "image",
    root: str | os.PathLike | None = None,
    split_column: str = "split",
    image_root: str | os.PathLike | None = None,
) -> CsvFolder:
    """The ``csv:PATH[,groups=A+B,attributes=C+D,image=COLUMN,root=DIR,split=test]`` data spec:
    image paths relative to ``root`` (default: the CSV's folder), ``groups`` read as group columns
    with any number of values, the rest (or ``attributes``) as 0/1 labels. A CSV without a split
    column is used whole, whatever ``split`` asks for; its split rule says nothing is held out."""
    path = Path(path)
    try:
        with files.open_file(path, "table", "CSV file", "give the CSV of image paths") as fh:
            header = pd.read_csv(fh, nrows=0).columns.str.strip()
    except ValueError:  # not CSV text: CsvFolder names the problem
        header = pd.Index([])
    if split_column not in header:
        split = None
    return CsvFolder(
        path,
        Path(root or image_root or path.parent),
        image_size,
        attributes=_names(attributes) if attributes is not None else None,
        group_columns=_names(groups),
        split=split,
        image_column=image,
        split_column=split_column,
    )


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"a+b"`` (a data spec's list) or a sequence -> names."""
    return (
        tuple(v.strip() for v in value.split("+") if v.strip())
        if isinstance(value, str)
        else tuple(value)
    )


def _rule(split: str | None, kept: int, total: int, how: str) -> tuple[str, bool]:
    """(split rule text, held out) for ``kept`` of ``total`` images chosen by ``how``."""
    if split is None:
        return f"all {kept} images, nothing held out ({how})", False
    return f"{split} split: {kept} of {total} images ({how})", True


def _celeba_partition(path: Path, attrs: _Listing) -> np.ndarray:
    """Partition code (0/1/2) of every listed HQ image: its CelebA source's official partition,
    read from the mapping file (row ``idx`` = HQ image number, ``orig_file`` its CelebA file)."""
    table = pd.read_csv(
        io.BytesIO(_read_table(path, f"{path.name} lists idx orig_idx orig_file")),
        sep=r"\s+", dtype=str, keep_default_na=False,
    )  # fmt: skip
    missing = [c for c in ("idx", "orig_file") if c not in table.columns]
    numbers = pd.to_numeric(
        table.get("orig_file", pd.Series(dtype=str)).str.removesuffix(".jpg"), errors="coerce"
    )
    index = pd.to_numeric(table.get("idx", pd.Series(dtype=str)), errors="coerce")
    bad = np.flatnonzero((numbers.isna() | index.isna()).to_numpy())
    if missing or bad.size:
        where = "line 1" if missing else f"line {bad[0] + 2}"
        raise BiascheckError(
            f"{path} {where}: expected the columns idx orig_idx orig_file (e.g. 0 119613 "
            "119614.jpg); restore the file from CelebAMask-HQ"
        )
    source = pd.Series(numbers.to_numpy(), index=index.astype(np.int64).to_numpy())
    images = pd.Series(attrs.names).str[:-4].astype(np.int64)
    rows = source.index.get_indexer(images)
    if (rows < 0).any():
        row = int(np.argmax(rows < 0))
        raise BiascheckError(
            f"{attrs.where(row)}: image {attrs.names[row]} has no row in {path}; restore the "
            "mapping file from CelebAMask-HQ"
        )
    return np.searchsorted(CELEBA_PARTITION_ENDS, source.to_numpy()[rows], side="left")


def open_dataset(path: str | os.PathLike, **kwargs) -> BiasDataset:
    """The loader for a folder in CelebA, CelebAMask-HQ or Waterbirds layout, or for a CSV file.

    A CSV is read by :func:`csv_folder`.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return csv_folder(path, **kwargs)
    for marker, loader in (
        (CELEBA_FILES[1], CelebA),
        (CELEBAMASK_HQ_FILES[1], CelebAMaskHQ),
        ("metadata.csv", Waterbirds),
    ):
        if (path / marker).is_file():
            return loader(path, **kwargs)
    raise BiascheckError(
        f"{path} is not a known dataset layout; expected a folder with {CELEBA_FILES[1]} (CelebA), "
        f"{CELEBAMASK_HQ_FILES[1]} (CelebAMask-HQ) or metadata.csv (Waterbirds), or a .csv file"
    )
