"""Real-format loaders on tiny trees written in the exact CelebA, CelebAMask-HQ and Waterbirds layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import default_collate

from pytest_biascheck.data.real import (
    CelebA,
    CelebAMaskHQ,
    CsvFolder,
    MetadataGroups,
    Waterbirds,
    open_dataset,
)
from pytest_biascheck.data.regions import PART_NAMES, REGION_NAMES
from pytest_biascheck.errors import BiascheckError
from tests.conftest import FUZZ_RUNS

COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255))
ATTRS = ("Male", "Smiling", "Young", "Eyeglasses")
# CelebA rows: name -> (attribute values in {-1, 1}, partition 0/1/2); images get COLOURS in order.
CELEBA = {
    "000001.jpg": ((1, -1, 1, -1), 0),
    "000002.jpg": ((-1, 1, 1, -1), 1),
    "000003.jpg": ((-1, -1, -1, 1), 2),
    "000004.jpg": ((1, 1, -1, -1), 2),
}
LANDMARK_NAMES = (
    "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
    "leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
)
BASE_LANDMARKS = (70, 110, 108, 112, 88, 134, 72, 152, 106, 154)


def solid(path: Path, colour: tuple[int, int, int], size: tuple[int, int]) -> None:
    """Write a solid-colour image (``size`` is PIL's (width, height))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def edit_line(path: Path, line: int, text: str) -> None:
    """Replace 1-based ``line`` of a text file."""
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


def write_celeba(root: Path) -> Path:
    """Aligned CelebA: 178x218 images, the attribute, partition (reversed order) and landmark files."""
    names = list(CELEBA)
    for name, colour in zip(names, COLOURS, strict=False):
        solid(root / "img_align_celeba" / name, colour, (178, 218))
    attr_rows = [f"{n}  " + " ".join(f"{v:2d}" for v in CELEBA[n][0]) for n in names]
    (root / "list_attr_celeba.txt").write_text(
        f"{len(names)}\n{' '.join(ATTRS)} \n" + "\n".join(attr_rows) + "\n"
    )
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{n} {CELEBA[n][1]}\n" for n in reversed(names))
    )
    marks = [
        f"{n}    " + "  ".join(str(v + 2 * k) for v in BASE_LANDMARKS) for k, n in enumerate(names)
    ]
    (root / "list_landmarks_align_celeba.txt").write_text(
        f"{len(names)}\n{LANDMARK_NAMES}\n" + "\n".join(marks) + "\n"
    )
    return root


HQ_IDS = (0, 1, 2, 2001)  # 2001 lives in mask folder 1


def mask_png(root: Path, image_id: int, part: str, boxes, size=(512, 512), mode="L") -> Path:
    """Write a binary part mask with white (row0, row1, col0, col1) boxes on black."""
    pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
    for r0, r1, c0, c1 in boxes:
        pixels[r0:r1, c0:c1] = 255
    path = root / "CelebAMask-HQ-mask-anno" / str(image_id // 2000) / f"{image_id:05d}_{part}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


# Image 0's part boxes in the 512x512 mask frame (rows, cols); written in this order.
HQ_PARTS = {
    "skin": (64, 448, 64, 448),
    "l_eye": (100, 203, 130, 170),
    "mouth": (384, 448, 192, 320),
    "u_lip": (384, 400, 192, 320),
    "hair": (0, 64, 0, 512),
}


def write_hq(root: Path, n_listed: int | None = None) -> Path:
    """CelebAMask-HQ: 1024x1024 images, the attribute file and per-part masks (image 0 detailed)."""
    ids = HQ_IDS if n_listed is None else tuple(range(n_listed))
    rows = [f"{k}.jpg  " + " ".join(("1", "-1")[(k + j) % 2] for j in range(3)) for k in ids]
    (root / "CelebA-HQ-img").mkdir(parents=True)
    (root / "CelebAMask-HQ-mask-anno").mkdir(parents=True)
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text(
        f"{len(ids)}\nMale Smiling Young\n" + "\n".join(rows) + "\n"
    )
    if n_listed is None:
        for k, colour in zip(ids, COLOURS, strict=False):
            solid(root / "CelebA-HQ-img" / f"{k}.jpg", colour, (1024, 1024))
            mask_png(root, k, "skin", [(0, 512, 0, 512)], mode="RGB")
        for part, box in HQ_PARTS.items():
            mask_png(root, 0, part, [box], mode="RGB" if part == "mouth" else "L")
    return root


def write_waterbirds(root: Path) -> Path:
    """Waterbirds metadata.csv (with the real extra column) and images in species folders."""
    rows = [(0, "001.A/a.jpg", 1, 0, 1), (1, "002.B/b.jpg", 0, 2, 1), (2, "003.C/c.jpg", 1, 2, 0)]
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for (img_id, name, y, split, place), colour in zip(rows, COLOURS, strict=False):
        solid(root / name, colour, (40, 30))
        lines.append(f"{img_id},{name},{y},{split},{place},/l/lake/x.jpg")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def write_csv(root: Path) -> Path:
    """A generic CSV with three binary codings, a string and an integer group column, a split."""
    text = (
        "image,Smiling,Male,Young,race,age_bin,split\n"
        "imgs/a.png,1,-1,true,b,10,test\n"
        "imgs/b.png,0,1,False,a,2,train\n"
        "imgs/c.png,1,1,TRUE,c,2,test\n"
        "imgs/d.png,0,-1,false,b,30,test\n"
    )
    for name, colour in zip("abcd", COLOURS, strict=False):
        solid(root / "imgs" / f"{name}.png", colour, (20, 20))
    (root / "labels.csv").write_text(text)
    return root / "labels.csv"


def colour_of(image: torch.Tensor) -> tuple[int, ...]:
    """Mean colour of an image, rounded to 0..255."""
    return tuple(round(v) for v in (image.mean((1, 2)) * 255).tolist())


def assert_colour(image: torch.Tensor, colour: tuple[int, int, int]) -> None:
    """A solid (JPEG-compressed) image decodes to its colour within a few levels."""
    assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
    assert np.allclose(colour_of(image), colour, atol=4)


# --- CelebA -------------------------------------------------------------------------------------


def test_celeba_labels_splits_and_images(tmp_path):
    root = write_celeba(tmp_path)
    test = CelebA(root, split="test", image_size=16, attributes=["Smiling", "Male"])
    assert test.attributes == ("Smiling", "Male")
    assert [test.image_path(i).name for i in range(len(test))] == ["000003.jpg", "000004.jpg"]
    items = [test[i] for i in range(len(test))]
    assert torch.equal(torch.stack([s["labels"] for s in items]), torch.tensor([[0.0, 0], [1, 1]]))
    assert items[0]["image"].shape == (3, 16, 16)
    assert_colour(items[0]["image"], COLOURS[2])
    assert_colour(items[1]["image"], COLOURS[3])
    assert [int(s["index"]) for s in items] == [0, 1]
    assert "masks" not in items[0] and "groups" not in items[0]
    every = CelebA(root, split=None)
    assert every.attributes == ATTRS
    assert len(CelebA(root, split="train")) == len(CelebA(root, split="val")) == 1
    assert torch.equal(every[1]["labels"], torch.tensor([0.0, 1, 1, 0]))


def test_celeba_landmarks_scale_with_the_resize(tmp_path):
    data = CelebA(write_celeba(tmp_path), split=None, image_size=(109, 89))  # exactly half size
    # The file's landmarks of image k are BASE_LANDMARKS + 2k, so half of them is base/2 + k.
    base = [[35.0, 55.0], [54.0, 56.0], [44.0, 67.0], [36.0, 76.0], [53.0, 77.0]]
    for k in range(4):
        sample = data[k]
        assert sample["image"].shape == (3, 109, 89)
        assert sample["landmarks"].dtype == torch.float32
        assert torch.equal(sample["landmarks"], torch.tensor(base) + k)
    batch = default_collate([data[0], data[3]])
    assert batch["landmarks"].shape == (2, 5, 2) and batch["index"].tolist() == [0, 3]


def test_celeba_unknown_attribute_suggests_close_names(tmp_path):
    with pytest.raises(BiascheckError, match=r"list_attr_celeba\.txt line 2.*'Smilng'.*Smiling"):
        CelebA(write_celeba(tmp_path), attributes=["Smilng"])


ATTR, PART, MARKS = (
    "list_attr_celeba.txt",
    "list_eval_partition.txt",
    "list_landmarks_align_celeba.txt",
)


@pytest.mark.parametrize(
    ("file", "line", "text", "expected"),
    [
        (ATTR, 4, "000002.jpg -1 1 1", r"list_attr_celeba\.txt line 4: expected 5 fields"),
        (ATTR, 5, "000003.jpg -1 0 -1 1", r"list_attr_celeba\.txt line 5: Smiling is '0'"),
        (ATTR, 1, "5", r"list_attr_celeba\.txt line 1: the header says 5 images"),
        (ATTR, 1, "four", r"list_attr_celeba\.txt line 1: expected the number of images"),
        (PART, 2, "000009.jpg 2", r"list_attr_celeba\.txt line 5: 000003\.jpg is not in .*partit"),
        (PART, 3, "000002.jpg 3", r"list_eval_partition\.txt line 3: .*'3'.*0, 1 or 2"),
        (PART, 1, "000002.jpg 1", r"list_eval_partition\.txt line 3: 000002\.jpg is listed twice"),
        (MARKS, 2, "lefteye_x lefteye_y", r"list_landmarks_align_celeba\.txt line 2: expected 10"),
        (MARKS, 6, "000004.jpg 1 2 3 4 5 6 7 8 9 x", r"landmarks_align_celeba\.txt line 6: .*'x'"),
    ],
)
def test_celeba_bad_lines_name_the_file_and_line(tmp_path, file, line, text, expected):
    root = write_celeba(tmp_path)
    edit_line(root / file, line, text)
    with pytest.raises(BiascheckError, match=expected):
        CelebA(root)


def test_celeba_partition_listing_other_images_names_the_line(tmp_path):
    root = write_celeba(tmp_path)
    (root / PART).write_text("".join(f"{n} 0\n" for n in list(CELEBA)[:3]))
    with pytest.raises(BiascheckError, match=r"celeba\.txt line 6: 000004\.jpg is not in"):
        CelebA(root)
    (root / PART).write_text("".join(f"{n} 0\n" for n in [*CELEBA, "000009.jpg"]))
    with pytest.raises(BiascheckError, match=r"partition\.txt line 5: 000009\.jpg is not in"):
        CelebA(root)


def test_celeba_missing_file_and_missing_image(tmp_path):
    root = write_celeba(tmp_path)
    (root / "img_align_celeba" / "000004.jpg").unlink()
    data = CelebA(root, split="test")
    with pytest.raises(
        BiascheckError, match=r"list_attr_celeba\.txt line 6: image .*000004\.jpg does not exist"
    ):
        data[1]
    (root / MARKS).unlink()
    with pytest.raises(BiascheckError, match=r"list_landmarks_align_celeba\.txt does not exist"):
        CelebA(root)


# --- CelebAMask-HQ ------------------------------------------------------------------------------


def expected_parts_512() -> np.ndarray:
    """Image 0's part label map painted by hand: later parts in PART_NAMES order win."""
    label = np.zeros((512, 512), dtype=np.int64)
    for part in sorted(HQ_PARTS, key=PART_NAMES.index):
        r0, r1, c0, c1 = HQ_PARTS[part]
        label[r0:r1, c0:c1] = PART_NAMES.index(part)
    return label


def test_hq_part_label_map_and_regions(tmp_path):
    data = CelebAMaskHQ(write_hq(tmp_path), split=None, image_size=64)
    assert data.region_names == REGION_NAMES
    assert np.array_equal(data.part_map(0).numpy(), expected_parts_512())
    sample = data[0]
    masks, parts = sample["masks"], sample["parts"]
    assert masks.dtype == torch.bool and masks.shape == (len(REGION_NAMES), 64, 64)
    assert parts.dtype == torch.int64 and parts.shape == (64, 64)
    assert torch.equal(masks.sum(0), torch.ones(64, 64, dtype=torch.int64))  # a partition
    # 512 -> 64 samples the mask at pixel centres 8i + 4: the mouth box rows 384..447, cols
    # 192..319 becomes rows 48..55, cols 24..39; u_lip (rows 384..399) wins rows 48..49.
    mouth = torch.zeros(64, 64, dtype=torch.bool)
    mouth[48:56, 24:40] = True
    assert torch.equal(masks[REGION_NAMES.index("mouth")], mouth)
    assert (parts[48:50, 24:40] == PART_NAMES.index("u_lip")).all()
    assert (parts[50:56, 24:40] == PART_NAMES.index("mouth")).all()
    # l_eye rows 100..202, cols 130..169 (not multiples of 8): centres 8i+4 inside -> rows 12..24,
    # cols 16..20.
    eyes = torch.zeros(64, 64, dtype=torch.bool)
    eyes[12:25, 16:21] = True
    assert torch.equal(masks[REGION_NAMES.index("eyes")], eyes)
    assert (
        masks[REGION_NAMES.index("hair"), :8].all()
        and not masks[REGION_NAMES.index("hair"), 8:].any()
    )
    assert_colour(sample["image"], COLOURS[0])
    assert torch.equal(sample["labels"], torch.tensor([1.0, 0.0, 1.0]))


def test_hq_mask_folders_and_rectangular_size(tmp_path):
    data = CelebAMaskHQ(write_hq(tmp_path), split=None, image_size=(32, 16))
    last = data[3]  # image 2001, masks in folder 1
    assert data.image_path(3).name == "2001.jpg"
    assert last["image"].shape == (3, 32, 16) and last["masks"].shape == (len(REGION_NAMES), 32, 16)
    assert last["masks"][REGION_NAMES.index("skin")].all()
    assert_colour(last["image"], COLOURS[3])
    batch = default_collate([data[1], data[2]])
    assert batch["masks"].shape == (2, len(REGION_NAMES), 32, 16)


def authors_split(n: int, seed: int) -> list[np.ndarray]:
    """The Attention-IoU authors' split as their code draws it (legacy global seed, int() bounds)."""
    np.random.seed(seed)
    indices = np.random.permutation(n)
    return [
        np.sort(indices[: int(n * 0.7)]),
        np.sort(indices[int(n * 0.7) : int(n * (0.7 + 0.15))]),
        np.sort(indices[int(n * (1 - 0.15)) :]),
    ]


@pytest.mark.parametrize("seed", [0, 3])
def test_hq_split_is_the_papers_70_15_15(tmp_path, seed):
    root = write_hq(tmp_path, n_listed=40)
    splits = [CelebAMaskHQ(root, split=s, split_seed=seed) for s in ("train", "val", "test")]
    ids = [np.array([int(d.image_path(i).stem) for i in range(len(d))]) for d in splits]
    assert [len(i) for i in ids] == [28, 6, 6]
    for got, expected in zip(ids, authors_split(40, seed), strict=True):
        assert np.array_equal(got, expected)
    assert not np.array_equal(ids[2], authors_split(40, seed + 1)[2])


def test_hq_mask_errors_name_the_file(tmp_path):
    root = write_hq(tmp_path)
    bad = mask_png(root, 1, "nose", [(0, 10, 0, 10)], size=(256, 256))
    data = CelebAMaskHQ(root, split=None)
    with pytest.raises(BiascheckError, match=r"00001_nose\.png is 256x256.*512x512"):
        data[1]
    bad.unlink()
    (root / "CelebAMask-HQ-mask-anno" / "0" / "00002_skin.png").unlink()
    with pytest.raises(
        BiascheckError, match=r"no part masks for image 2 .*attribute-anno\.txt line 5"
    ):
        data[2]


def test_hq_bad_image_name_and_count(tmp_path):
    root = write_hq(tmp_path)
    anno = root / "CelebAMask-HQ-attribute-anno.txt"
    edit_line(anno, 4, "one.jpg 1 1 1")
    with pytest.raises(BiascheckError, match=r"attribute-anno\.txt line 4: image name 'one\.jpg'"):
        CelebAMaskHQ(root)
    edit_line(anno, 1, "3")
    with pytest.raises(BiascheckError, match=r"attribute-anno\.txt line 1: the header says 3"):
        CelebAMaskHQ(root)


# --- Waterbirds ---------------------------------------------------------------------------------


def test_waterbirds_labels_groups_and_split(tmp_path):
    data = Waterbirds(write_waterbirds(tmp_path), split="test", image_size=8)
    assert data.attributes == ("Waterbird",) and data.group_names == ("place",)
    assert len(data) == 2 and data.image_path(1) == tmp_path / "003.C" / "c.jpg"
    first, second = data[0], data[1]
    assert torch.equal(first["labels"], torch.tensor([0.0])) and first["groups"].tolist() == [1]
    assert torch.equal(second["labels"], torch.tensor([1.0])) and second["groups"].tolist() == [0]
    assert first["groups"].dtype == torch.int64
    assert_colour(first["image"], COLOURS[1])
    assert len(Waterbirds(tmp_path, split="train")) == 1
    assert len(Waterbirds(tmp_path, split=None)) == 3


def test_waterbirds_missing_column_names_the_closest(tmp_path):
    meta = write_waterbirds(tmp_path) / "metadata.csv"
    edit_line(meta, 1, "img_id,img_filename,y,split,plce,place_filename")
    with pytest.raises(
        BiascheckError, match=r"metadata\.csv line 1: no column 'place' \(closest: 'plce'\)"
    ):
        Waterbirds(tmp_path)


@pytest.mark.parametrize(
    ("line", "text", "expected"),
    [
        (3, "1,002.B/b.jpg,0,5,1,x", r"metadata\.csv line 3: split is '5'"),
        (4, "2,003.C/c.jpg,2,2,0,x", r"metadata\.csv line 4: y is '2'"),
        (2, "0,001.A/a.jpg,1,0,1,x,extra", r"metadata\.csv line 2: expected 6 fields .* found 7"),
    ],
)
def test_waterbirds_bad_lines(tmp_path, line, text, expected):
    meta = write_waterbirds(tmp_path) / "metadata.csv"
    edit_line(meta, line, text)
    with pytest.raises(BiascheckError, match=expected):
        Waterbirds(tmp_path)


# --- CsvFolder ----------------------------------------------------------------------------------


def test_csv_folder_codings_groups_and_split(tmp_path):
    csv = write_csv(tmp_path)
    data = CsvFolder(
        csv,
        tmp_path,
        image_size=4,
        attributes=("Smiling", "Male", "Young"),
        group_columns=("race", "age_bin"),
        split="test",
    )
    assert data.group_levels == {"race": ("a", "b", "c"), "age_bin": (2, 10, 30)}  # numeric order
    assert data.group_names == ("race", "age_bin") and len(data) == 3
    labels = torch.stack([data[i]["labels"] for i in range(3)])
    groups = torch.stack([data[i]["groups"] for i in range(3)])
    assert torch.equal(labels, torch.tensor([[1.0, 0, 1], [1, 1, 1], [0, 0, 0]]))
    assert torch.equal(groups, torch.tensor([[1, 1], [2, 0], [1, 2]]))
    assert_colour(data[1]["image"], COLOURS[2])
    every = CsvFolder(csv, tmp_path, group_columns=("race", "age_bin"))
    assert every.attributes == ("Smiling", "Male", "Young")  # all but image, split and groups
    assert len(CsvFolder(csv, tmp_path, attributes="Smiling", split="train")) == 1


@pytest.mark.parametrize(
    ("line", "text", "kwargs", "expected"),
    [
        (
            1,
            "img,Smiling,Male,Young,race,age_bin,split",
            {},
            r"line 1: no column 'image' \(closest: 'img'\)",
        ),
        (3, "imgs/b.png,maybe,1,false,a,2,train", {}, r"labels\.csv line 3: Smiling is 'maybe'"),
        (
            3,
            "imgs/b.png,1,0,false,a,2,train",
            {},
            r"labels\.csv line 2: Male is '-1'.*one binary coding",
        ),
        (
            4,
            "imgs/c.png,1,1,true,,2,test",
            {"group_columns": ["race"]},
            r"labels\.csv line 4: race is empty",
        ),
        (2, "imgs/a.png,1,-1,true,b,10,test", {"split": "val"}, r"no row has split='val'"),
    ],
)
def test_csv_folder_errors(tmp_path, line, text, kwargs, expected):
    csv = write_csv(tmp_path)
    edit_line(csv, line, text)
    with pytest.raises(BiascheckError, match=expected):
        CsvFolder(csv, tmp_path, attributes=("Smiling", "Male"), **kwargs)


def test_csv_folder_missing_image_names_the_line(tmp_path):
    csv = write_csv(tmp_path)
    (tmp_path / "imgs" / "c.png").unlink()
    with pytest.raises(BiascheckError, match=r"labels\.csv line 4: image .*c\.png does not exist"):
        CsvFolder(csv, tmp_path, attributes=("Smiling",))[2]


# --- open_dataset -------------------------------------------------------------------------------


def test_open_dataset_detects_each_layout(tmp_path):
    celeba = open_dataset(write_celeba(tmp_path / "celeba"), split="test")
    hq = open_dataset(write_hq(tmp_path / "hq"), split=None)
    birds = open_dataset(write_waterbirds(tmp_path / "birds"))
    csv = open_dataset(write_csv(tmp_path / "csv"), split="test", attributes=("Smiling",))
    assert (type(celeba), type(hq), type(birds), type(csv)) == (
        CelebA,
        CelebAMaskHQ,
        Waterbirds,
        CsvFolder,
    )
    assert len(celeba) == 2 and len(hq) == 4 and len(birds) == 2 and len(csv) == 3
    assert_colour(csv[0]["image"], COLOURS[0])  # paths relative to the CSV's folder
    plain = tmp_path / "plain.csv"
    plain.write_text("image,Smiling\ncsv/imgs/a.png,1\n")
    assert len(open_dataset(plain, split="test")) == 1  # no split column: used whole


def test_open_dataset_unknown_layout_lists_expected_files(tmp_path):
    with pytest.raises(
        BiascheckError, match=r"list_attr_celeba\.txt.*attribute-anno\.txt.*metadata\.csv"
    ):
        open_dataset(tmp_path)


# --- metadata join ------------------------------------------------------------------------------


def test_metadata_groups_join_on_the_image_id(tmp_path):
    data = CelebA(write_celeba(tmp_path), split=None, image_size=8)
    meta = tmp_path / "skin.csv"  # rows in another order, one for an image outside the data
    meta.write_text(
        "image_id,skin_tone,site\n000004.jpg,3,b\n000001.jpg,1,a\n999999.jpg,2,a\n"
        "000003.jpg,2,a\n000002.jpg,1,b\n"
    )
    joined = MetadataGroups(data, meta)
    assert joined.group_names == ("skin_tone", "site") and len(joined) == 4
    assert joined.group_levels == {"skin_tone": (1, 2, 3), "site": ("a", "b")}
    groups = torch.stack([joined[i]["groups"] for i in range(4)])
    assert groups.tolist() == [[0, 0], [0, 1], [1, 0], [2, 1]]
    assert torch.equal(joined[2]["labels"], data[2]["labels"])
    assert joined.protected_levels("Male*skin_tone") == ("0*1", "0*2", "0*3", "1*1", "1*2", "1*3")


def test_metadata_groups_follow_the_datas_own_groups_and_match_file_names(tmp_path):
    data = Waterbirds(write_waterbirds(tmp_path), split=None, image_size=8)
    meta = tmp_path / "extra.csv"  # ids are file names, not the listed paths
    meta.write_text("file,habitat\na.jpg,coast\nb.jpg,forest\nc.jpg,coast\n")
    joined = MetadataGroups(data, meta, id_column="file")
    assert joined.group_names == ("place", "habitat")
    assert [joined[i]["groups"].tolist() for i in range(3)] == [[1, 0], [1, 1], [0, 0]]


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("image_id,tone\n000001.jpg,1\n", {}, r"skin\.csv: no 'image_id' row for 3 of 4 images \(first: '000002\.jpg'\)"),
        ("image_id,tone\n000001.jpg,1\n000001.jpg,2\n", {}, r"skin\.csv line 3: id '000001\.jpg' appears twice"),
        ("image_id,Male\n000001.jpg,1\n", {}, r"skin\.csv line 1: column 'Male' is already in the data"),
        ("image,tone\n000001.jpg,1\n", {}, r"skin\.csv line 1: no column 'image_id' \(closest: 'image'\)"),
        ("name,tone\n000001.jpg,1\n", {"id_column": "name"}, r"skin\.csv: no 'name' row"),
    ],
)  # fmt: skip
def test_metadata_errors_name_the_file_and_the_fix(tmp_path, text, kwargs, expected):
    data = CelebA(write_celeba(tmp_path), split=None, image_size=8)
    (tmp_path / "skin.csv").write_text(text)
    with pytest.raises(BiascheckError, match=expected) as error:
        MetadataGroups(data, tmp_path / "skin.csv", **kwargs)
    assert "\n" not in str(error.value)


CELLS = st.sampled_from(
    [
        "0",
        "1",
        "-1",
        "true",
        "FALSE",
        "",
        " 1 ",
        "2",
        "a.png",
        "sub/b.png",
        "../c.png",
        "/abs.png",
        "x\x00.png",
        '"q,uote"',
        "train",
        "test",
        "0.5",
        "nan",
    ]
) | st.text(max_size=6)
COLUMNS = st.sampled_from(["image", "Smiling", "Male", "split", "race", "image_id", ""]) | st.text(
    max_size=4
)


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(",".join(line) for line in [header, *rows]) + "\n"


CSV_FILES = st.one_of(
    st.builds(
        csv_text,
        st.lists(COLUMNS, min_size=1, max_size=5),
        st.lists(st.lists(CELLS, min_size=0, max_size=6), max_size=6),
    ).map(str.encode),
    st.binary(max_size=60),
)


def assert_one_line(error: BiascheckError, path: Path) -> None:
    message = str(error)
    assert "\n" not in message and path.name in message, message


@pytest.mark.parametrize("examples", FUZZ_RUNS)
def test_csv_reader_fuzz(tmp_path, examples):
    """Any CSV bytes and options: a dataset whose labels are 0/1 and whose image paths stay in
    the folder, or one BiascheckError line naming the file."""
    path = tmp_path / "labels.csv"

    @settings(max_examples=examples, deadline=None, database=None)
    @given(
        CSV_FILES,
        st.lists(st.sampled_from(["race", "Male", "split"]), max_size=2, unique=True),
        st.sampled_from([None, "test", "train"]),
    )
    def run(data: bytes, groups: list[str], split: str | None) -> None:
        path.write_bytes(data)
        try:
            dataset = CsvFolder(path, tmp_path, group_columns=groups, split=split)
        except BiascheckError as exc:
            assert_one_line(exc, path)
            return
        labels = dataset._labels
        assert labels.shape == (len(dataset), len(dataset.attributes))
        assert set(labels.unique().tolist()) <= {0.0, 1.0}
        for name in dataset.image_ids():
            assert "\0" not in name and not name.startswith("/")
            assert ".." not in Path(name).parts

    run()


@pytest.mark.parametrize("examples", FUZZ_RUNS)
def test_metadata_reader_fuzz(tmp_path, examples):
    """Any metadata CSV joined onto a three-image dataset: group codes inside each column's
    levels for every image, or one BiascheckError line naming the file."""
    write_csv(tmp_path)
    base = CsvFolder(tmp_path / "labels.csv", tmp_path, attributes=["Smiling"])
    path = tmp_path / "meta.csv"
    ids = st.sampled_from([*base.image_ids(), "0", "x.png", ""]) | CELLS

    @settings(max_examples=examples, deadline=None, database=None)
    @given(
        st.one_of(
            st.builds(
                csv_text,
                st.lists(
                    st.sampled_from(["image_id", "skin", "age"]) | COLUMNS, min_size=1, max_size=4
                ),
                st.lists(st.lists(ids, min_size=1, max_size=4), max_size=5),
            ).map(str.encode),
            st.binary(max_size=40),
        ),
    )
    def run(data: bytes) -> None:
        path.write_bytes(data)
        try:
            joined = MetadataGroups(base, path)
        except BiascheckError as exc:
            assert_one_line(exc, path)
            return
        groups = joined._groups
        assert groups.shape == (len(base), len(joined.group_names) - len(base.group_names))
        for column, name in enumerate(joined.group_names[len(base.group_names) :]):
            assert (
                0
                <= int(groups[:, column].min())
                <= int(groups[:, column].max())
                < len(joined.group_levels[name])
            )

    run()


# --- split rules, CelebA partitions for CelebAMask-HQ, CSV data specs ----------------------------


def test_hq_takes_celeba_official_partition_through_the_mapping_file(tmp_path):
    """Rows of CelebA-HQ-to-CelebA-mapping.txt (idx orig_idx orig_file): HQ images 0..5 from CelebA
    files in each partition, at both ends of each range (000001-162770 train, 162771-182637 val,
    182638-202599 test)."""
    root = write_hq(tmp_path, n_listed=6)
    sources = {0: 1, 1: 162770, 2: 162771, 3: 182637, 4: 182638, 5: 202599}
    lines = ["idx orig_idx orig_file"] + [f"{k} {n - 1} {n:06d}.jpg" for k, n in sources.items()]
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(lines) + "\n")
    got = {}
    for split in ("train", "val", "test"):
        data = CelebAMaskHQ(root, split=split)
        got[split] = sorted(int(data.image_path(i).stem) for i in range(len(data)))
        assert data.held_out
        assert data.notes() == [
            f"{split} split: 2 of 6 images (CelebA's official partition of the source images "
            "(CelebA-HQ-to-CelebA-mapping.txt))"
        ]
    assert got == {"train": [0, 1], "val": [2, 3], "test": [4, 5]}
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text(
        "idx orig_idx orig_file\n0 0 000001.jpg\n"
    )
    with pytest.raises(BiascheckError, match=r"1\.jpg has no row in .*mapping\.txt"):
        CelebAMaskHQ(root)


def test_hq_without_the_mapping_file_says_its_split_is_random(tmp_path):
    data = CelebAMaskHQ(write_hq(tmp_path, n_listed=40), split="test")
    (note,) = data.notes()
    assert note.startswith("test split: 6 of 40 images (a random 70/15/15 split (seed 0)")
    assert "add CelebA-HQ-to-CelebA-mapping.txt" in note


def test_csv_spec_names_group_columns_with_any_number_of_values(tmp_path):
    from pytest_biascheck.data import open_data

    csv = write_csv(tmp_path)
    text = csv.read_text().replace("race", "skin_tone")
    csv.write_text(text.replace(",b,", ",III,").replace(",a,", ",I,").replace(",c,", ",II,"))
    with pytest.raises(BiascheckError) as refused:
        open_data(f"csv:{csv}")
    assert "skin_tone is 'III'" in str(refused.value) and "groups=<name>" in str(refused.value)
    data = open_data(f"csv:{csv},groups=skin_tone+age_bin", "test")
    assert data.attributes == ("Smiling", "Male", "Young")
    assert data.group_names == ("skin_tone", "age_bin")
    assert data.protected_levels("skin_tone") == ("I", "II", "III")
    batch = default_collate([data[i] for i in range(len(data))])
    assert data.protected_values(batch, "skin_tone").tolist() == [2, 1, 2]  # rows a, c, d
    assert data.notes() == ["test split: 3 of 4 images (the split column of labels.csv)"]
    every = open_data(f"csv:{csv},groups=skin_tone+age_bin,split=all", "test")
    assert len(every) == 4 and not every.held_out
    only = open_data(f"csv:{csv},groups=skin_tone,attributes=Smiling,split=train")
    assert only.attributes == ("Smiling",) and len(only) == 1


def test_csv_without_a_split_column_says_nothing_is_held_out(tmp_path):
    from pytest_biascheck.data import open_data

    csv = write_csv(tmp_path)
    lines = [line.rsplit(",", 1)[0] for line in csv.read_text().splitlines()]
    csv.write_text("\n".join(lines) + "\n")
    data = open_data(f"csv:{csv},groups=race+age_bin", "test")
    assert len(data) == 4 and not data.held_out
    assert data.notes() == ["all 4 images, nothing held out (labels.csv has no split column)"]


def test_path_specs_split_off_options_only_before_key_equals(tmp_path):
    from pytest_biascheck.data import parse_spec

    assert parse_spec("csv:/data/a,b/labels.csv,groups=x+y,split=all") == (
        "csv", "/data/a,b/labels.csv", {"groups": "x+y", "split": "all"}
    )  # fmt: skip
    assert parse_spec("celebamask:/data/hq") == ("celebamask", "/data/hq", {})
