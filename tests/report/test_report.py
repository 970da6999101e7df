"""The JSON and HTML reports: strict JSON with every table, self-contained escaped HTML rendered from
the same document, atomic writes, the report hook, and the images and chart geometry behind them."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
import io
import json
import math
import os
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import matthews_corrcoef

from pytest_biascheck.checks import BUILTIN
from pytest_biascheck.data.synth_faces import SynthFaces
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.evaluate import Results, _sum_maps, evaluate, sample_maps
from pytest_biascheck.model import load_checkpoint
from pytest_biascheck.planning import Plan, Scope
from pytest_biascheck.report import (
    HTML_NAME,
    JSON_NAME,
    SCHEMA,
    images,
    library_versions,
    svg,
    write_report,
)
from pytest_biascheck.report import html as report_html
from pytest_biascheck.report.cells import sample_cells
from pytest_biascheck.report.document import heatmap_vs_mcc, plain
from pytest_biascheck.suggest import Fix

ATTRIBUTES = ("Smiling", "Young")
PROTECTED = {"Male": 2, "Black_Hair": 2}
REGIONS = {"Smiling": "mouth", "Young": "eyes"}
EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def tiny_data() -> SynthFaces:
    return SynthFaces(n=48, image_size=32)


def evaluate_tiny(checkpoint: Path) -> Results:
    """A tiny model's Results on 48 small SynthFaces images (Male is predicted: heatmap scores)."""
    plan = Plan(ATTRIBUTES, PROTECTED, REGIONS, bootstrap=50, feature_probe=True)
    return evaluate(
        load_checkpoint(checkpoint), tiny_data(), "synthfaces:n=48", plan, batch_size=16
    )


def outcomes_for(results: Results, name: str) -> list[dict[str, Any]]:
    """Outcomes of every built-in check, shaped as ``items.CheckItem`` records them."""
    scope = Scope(list(ATTRIBUTES), list(PROTECTED), REGIONS, ["Male"])
    out = []
    for check in BUILTIN:
        for target in check.targets(scope):
            measured = check.measure(results, target, scope)
            passed = check.passes(measured.value, check.threshold)
            out.append(
                {"item": f"{name}.pt::{check.name}[{target.id}]", "model": name, "check": check.name,
                 "attribute": target.attribute, "other": target.other, "value": measured.value,
                 "low": measured.low, "high": measured.high, "n": measured.n,
                 "threshold": check.threshold, "op": ">=" if check.direction == "min" else "<=",
                 "status": "passed" if passed else "FAILED",
                 "recipe": check.command(target, scope, Fix(f"{name}.pt", name, "synthfaces", "synthfaces"))}
            )  # fmt: skip
    return out


def sample_entries(
    results: Results, name: str = "tiny", checkpoint: Path | None = None
) -> list[dict[str, Any]]:
    """One report entry for ``results`` under the model name ``name``; with the ``checkpoint`` it
    was evaluated from, the report draws sample images."""
    model = {"name": name, "path": f"/models/{name}.pt", "sha256": results.sha256,
             "arch": "biascheck.small_resnet", "provenance": {"seed": 0}}  # fmt: skip
    scope = {"attributes": list(ATTRIBUTES), "protected": list(PROTECTED), "regions": REGIONS}
    return [
        {
            "results": results,
            "outcomes": outcomes_for(results, name),
            "model": model,
            "scope": scope,
            "images": None
            if checkpoint is None
            else functools.partial(
                sample_maps, load_checkpoint(checkpoint), tiny_data(), results.plan
            ),
        }
    ]


META = {"data": "synthfaces:n=48", "config": {"bootstrap": 50}, "versions": library_versions()}


@pytest.fixture(scope="module")
def results(tiny_checkpoint: Path) -> Results:
    return evaluate_tiny(tiny_checkpoint)


@pytest.fixture(scope="module")
def written(
    results: Results, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    entries = sample_entries(results, checkpoint=tiny_checkpoint)
    return write_report(entries, tmp_path_factory.mktemp("report"), META)


def strict_json(text: str) -> Any:
    """Parse JSON, refusing the NaN/Infinity tokens that Python writes but JSON does not allow."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, and the text inside elements with an id."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: dict[str, str] = {}
        self._open: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open.append(dict(attrs).get("id") or "")

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag not in ("img", "meta", "link", "br"):
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1]:
            self.text[self._open[-1]] = self.text.get(self._open[-1], "") + data


# --- JSON -------------------------------------------------------------------------------------


def test_json_is_strict_and_counts_match_the_outcomes(
    results: Results, written: tuple[Path, Path]
) -> None:
    document = strict_json(written[0].read_text())
    outcomes = outcomes_for(results, "tiny")
    statuses = Counter(o["status"] for o in outcomes)
    assert document["schema"] == SCHEMA == "biascheck-report/2"
    assert document["summary"] == {
        "passed": statuses["passed"], "failed": statuses["FAILED"], "warned": 0, "xfailed": 0,
        "total": len(outcomes) - statuses["info"], "information": statuses["info"],
    }  # fmt: skip
    assert statuses["FAILED"] > 0 and statuses["passed"] > 0
    assert dt.datetime.fromisoformat(document["created"]).tzinfo is not None
    [model] = document["models"]
    assert (model["name"], model["sha256"], model["data"]) == ("tiny", results.sha256, results.data)
    assert document["meta"]["config"] == {"bootstrap": 50}
    for got, want in zip(model["checks"], outcomes, strict=True):
        for key in ("item", "status", "threshold", "op", "recipe", "n", "other"):
            assert got[key] == want[key]
        for key in ("value", "low", "high"):
            expected = float(want[key])
            assert got[key] is None if math.isnan(expected) else got[key] == pytest.approx(expected)


def test_every_table_round_trips_through_the_json(
    results: Results, written: tuple[Path, Path]
) -> None:
    tables = strict_json(written[0].read_text())["models"][0]["tables"]
    assert set(tables) == set(results.tables)
    for name, frame in results.tables.items():
        if not isinstance(frame.index, pd.RangeIndex):  # square MCC matrices keep their row names
            frame = frame.rename_axis("index").reset_index()
        got = pd.DataFrame(tables[name], columns=frame.columns).astype(frame.dtypes.to_dict())
        pd.testing.assert_frame_equal(got, frame.reset_index(drop=True), check_dtype=False)


def test_nan_and_infinity_become_null(results: Results, tmp_path: Path) -> None:
    entries = sample_entries(results)
    entries[0]["outcomes"][0].update(value=float("nan"), low=-math.inf, high=np.float32("inf"))
    json_path, _ = write_report(entries, tmp_path, {**META, "extra": [np.nan, torch.tensor(1.5)]})
    text = json_path.read_text()
    document = strict_json(text)
    check = document["models"][0]["checks"][0]
    assert (check["value"], check["low"], check["high"]) == (None, None, None)
    assert document["meta"]["extra"] == [None, 1.5]
    assert "NaN" not in text and "Infinity" not in text


def test_values_without_a_json_form_are_refused_with_their_place() -> None:
    with pytest.raises(ValueError, match=r"report\.meta\.when: object cannot go"):
        plain({"meta": {"when": object()}})


def test_heatmap_points_use_label_mcc_and_the_overall_heatmap_score(results: Results) -> None:
    points = {(p["attribute"], p["protected"]): p for p in heatmap_vs_mcc(results)}
    assert set(points) == {("Smiling", "Male"), ("Young", "Male")}
    table = results.tables["heatmap_score"]
    for (attribute, protected), point in points.items():
        labels = results.frame[f"y:{attribute}"] > 0.5
        expected = matthews_corrcoef(labels, results.frame[f"g:{protected}"])
        assert point["mcc"] == pytest.approx(expected)
        assert point["abs_mcc"] == pytest.approx(abs(expected))
        row = table[(table["attribute"] == attribute) & (table["group"] == "")]
        assert point["heatmap_score"] == row[row["label"] == -1]["mean"].item()
    matrix = pd.DataFrame([[1.0, 0.25], [0.25, 1.0]], ["Smiling", "Male"], ["Smiling", "Male"])
    given = dataclasses.replace(results, tables={**results.tables, "mcc_labels": matrix})
    assert [p["mcc"] for p in heatmap_vs_mcc(given) if p["attribute"] == "Smiling"] == [0.25]


# --- HTML -------------------------------------------------------------------------------------


def test_html_is_self_contained(written: tuple[Path, Path]) -> None:
    page = written[1].read_text()
    tags = Tags(page).tags
    assert not re.search(r"https?://", page)
    assert "url(" not in page and "@import" not in page
    assert not [t for t, _ in tags if t in ("iframe", "object", "embed")]
    assert [a for t, a in tags if t == "script"] == [{}]  # one inline script: sort and filter
    for tag, attrs in tags:
        if tag == "link":
            assert attrs.get("href", "").startswith("data:"), attrs
        if "href" in attrs and tag == "a":
            assert attrs["href"].startswith("#"), attrs
    sources = [attrs["src"] for tag, attrs in tags if tag == "img"]
    assert len(sources) > 10
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        picture = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert picture.format == "PNG" and picture.mode == "RGB"


def test_html_summary_and_tables_show_the_documents_numbers(
    results: Results, written: tuple[Path, Path]
) -> None:
    document = strict_json(written[0].read_text())
    parsed = Tags(written[1].read_text())
    for key in ("passed", "failed", "total"):
        assert int(parsed.text[f"n-{key}"]) == document["summary"][key]
    page = written[1].read_text()
    failed = [c for c in document["models"][0]["checks"] if c["status"] == "FAILED"]
    for check in failed:
        assert f'<code class="cmd">{check["recipe"]}</code>' in page
    frame = results.frame
    accuracy = ((frame["z:Young"] > 0) == (frame["y:Young"] > 0.5)).mean()
    row = re.search(r'<tr data-attribute="Young">(.*?)</tr>', page, re.S).group(1)
    assert re.search(r'class="n accuracy">([^<]*)<', row).group(1) == f"{accuracy:.3f}"


def test_names_from_models_and_config_render_as_text(results: Results, tmp_path: Path) -> None:
    entries = sample_entries(results, name=EVIL)
    entries[0]["scope"]["regions"] = {"Smiling": EVIL}
    _, html_path = write_report(entries, tmp_path, {**META, "config": {"note": EVIL}})
    page = html_path.read_text()
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    tags = Tags(page).tags
    assert [t for t, _ in tags if t == "script"] == ["script"]  # the report's own, no other
    assert page.count("<script") == 1
    assert not [a for _, a in tags if any(k.startswith("on") for k in a)]
    assert all(a["src"].startswith("data:") for t, a in tags if t == "img")


def test_number_format() -> None:
    assert report_html.number(None) == report_html.number(float("nan")) == "–"
    assert report_html.number(-0.0001) == "0.000"
    assert (report_html.number(0.12345), report_html.number(7), report_html.number(0.5, 1)) == (
        "0.123", "7", "0.5"
    )  # fmt: skip


def test_fixes_list_each_failed_recipe_once() -> None:
    checks = [
        {"check": "accuracy", "attribute": "A", "other": None, "status": "FAILED", "recipe": "x"},
        {"check": "fnr_gap", "attribute": "A", "other": "G", "status": "FAILED", "recipe": "x"},
        {"check": "fpr_gap", "attribute": "B", "other": "G", "status": "passed", "recipe": "y"},
    ]
    assert report_html.fixes(checks) == [
        {"command": "x", "checks": ["accuracy[A]", "fnr_gap[A-G]"]}
    ]


# --- writing ----------------------------------------------------------------------------------


def test_report_writes_exactly_two_files(written: tuple[Path, Path]) -> None:
    json_path, html_path = written
    assert (json_path.name, html_path.name) == (JSON_NAME, HTML_NAME)
    assert sorted(os.listdir(json_path.parent)) == sorted([JSON_NAME, HTML_NAME])


def test_a_failure_while_rendering_leaves_the_old_report(
    results: Results, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write_report(sample_entries(results), tmp_path, META)
    before = [p.read_bytes() for p in paths]

    def broken(*args: Any) -> str:
        raise RuntimeError("template exploded")

    monkeypatch.setattr(report_html, "render", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        write_report(sample_entries(results, name="new"), tmp_path, META)
    assert [p.read_bytes() for p in paths] == before
    assert sorted(os.listdir(tmp_path)) == sorted([JSON_NAME, HTML_NAME])


def test_a_failure_while_replacing_leaves_both_old_files(
    results: Results, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write_report(sample_entries(results), tmp_path, META)
    before = [p.read_bytes() for p in paths]
    replace = os.replace

    def fail_on_html(source: str, target: str) -> None:
        if str(target).endswith(HTML_NAME):
            raise OSError("disk full")
        replace(source, target)

    monkeypatch.setattr(os, "replace", fail_on_html)
    with pytest.raises(OSError, match="disk full"):
        write_report(sample_entries(results, name="new"), tmp_path, META)
    assert [p.read_bytes() for p in paths] == before
    assert sorted(os.listdir(tmp_path)) == sorted([JSON_NAME, HTML_NAME])


def test_report_folder_that_is_a_file_is_a_clear_error(results: Results, tmp_path: Path) -> None:
    target = tmp_path / "reports"
    target.write_text("")
    with pytest.raises(BiascheckError, match="is a file; pass a folder"):
        write_report(sample_entries(results), target, META)


def test_the_hook_changes_both_files(results: Results, tmp_path: Path) -> None:
    def modify(document: dict[str, Any]) -> None:
        document["models"][0]["name"] = "renamed-by-plugin"
        document["meta"]["config"]["reviewer"] = "plugin note"
        document["meta"]["score"] = float("nan")
        document["summary"]["failed"] = 999

    json_path, html_path = write_report(sample_entries(results), tmp_path, META, modify=modify)
    document = strict_json(json_path.read_text())
    page = html_path.read_text()
    assert document["models"][0]["name"] == "renamed-by-plugin"
    assert document["meta"]["config"]["reviewer"] == "plugin note"
    assert document["meta"]["score"] is None
    assert "<h2>renamed-by-plugin</h2>" in page and "plugin note" in page
    assert int(Tags(page).text["n-failed"]) == document["summary"]["failed"] == 999


# --- images -----------------------------------------------------------------------------------


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    return rgb @ torch.tensor([0.2126, 0.7152, 0.0722], dtype=rgb.dtype)


def test_colormap_runs_from_first_to_last_anchor_with_rising_luminance() -> None:
    lut = images.colormap()
    assert lut.shape == (256, 3)
    assert torch.equal(lut[0], images.ANCHORS[0]) and torch.allclose(lut[-1], images.ANCHORS[-1])
    assert bool((luminance(lut).diff() >= 0).all())


def test_overlay_blends_the_colormap_by_the_documented_weights() -> None:
    grey = torch.full((2, 3, 16, 16), 0.5)
    maps = torch.stack([torch.zeros(4, 4), torch.ones(4, 4)])
    out = images.overlay(grey, maps, size=16).double() / 255
    cold, hot = images.ANCHORS[0], images.ANCHORS[-1]
    low, high = images.MIN_ALPHA, images.MIN_ALPHA + images.ALPHA_RANGE
    assert torch.allclose(out[0], (1 - low) * 0.5 + low * cold, atol=1 / 255)
    assert torch.allclose(out[1], (1 - high) * 0.5 + high * hot, atol=1 / 255)


def test_overlay_puts_heat_where_the_map_is_and_ignores_batching() -> None:
    g = torch.Generator().manual_seed(0)
    pictures, maps = torch.rand(5, 3, 32, 32, generator=g), torch.zeros(5, 4, 4)
    maps[:, 0, 0] = 1.0
    together = images.overlay(pictures, maps)
    alone = torch.cat([images.overlay(pictures[i : i + 1], maps[i : i + 1]) for i in range(5)])
    assert torch.equal(together, alone)
    hot = images.ANCHORS[-1] * 255
    corner, far = together[:, 0, 0].double(), together[:, -1, -1].double()
    assert bool(((corner - hot).norm(dim=1) < (far - hot).norm(dim=1)).all())


def test_png_data_uri_is_lossless() -> None:
    pixels = torch.randint(0, 256, (7, 9, 3), generator=torch.Generator().manual_seed(1))
    uri = images.png_data_uri(pixels.to(torch.uint8))
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert np.array_equal(decoded, pixels.numpy())


def test_outline_is_the_inner_boundary_of_the_region_resized_to_the_tile() -> None:
    # A 2x2 square in a 4x4 mask, doubled to 8x8 with half-pixel bilinear weights: output pixel i
    # reads source (i + 0.5) / 2 - 0.5, so rows and columns 2..5 are at least 0.5 (a 4x4 square)
    # and its boundary is that square less its 2x2 interior.
    mask = torch.zeros(1, 4, 4)
    mask[0, 1:3, 1:3] = 1
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True
    expected[3:5, 3:5] = False
    assert torch.equal(images.outline(mask, size=8)[0], expected)
    pictures, maps = (
        torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
        torch.rand(1, 2, 2),
    )
    plain, drawn = images.overlay(pictures, maps, size=8), images.overlay(pictures, maps, 8, mask)
    cyan = torch.tensor(images.OUTLINE, dtype=torch.uint8)
    assert bool((drawn[0][expected] == cyan).all())
    assert torch.equal(drawn[0][~expected], plain[0][~expected])


def test_outline_of_a_region_filling_the_image_or_of_none_is_empty() -> None:
    assert not images.outline(torch.ones(1, 4, 4), size=8).any()
    assert not images.outline(torch.zeros(1, 4, 4), size=8).any()


def test_cell_sums_hold_the_mean_map_of_each_label_and_group_value() -> None:
    # Four images, one attribute, 1x2 maps; Smiling labels 1, 1, 1, 0 and Male values 0, 0, 1, 0.
    cams = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]], [[[0.5, 0.5]]], [[[0.2, 0.4]]]])
    labels = torch.tensor([[1], [1], [1], [0]])
    plan = Plan(("Smiling",), {"Male": 2}, {})
    sums: dict[str, torch.Tensor] = {}
    _sum_maps(
        sums,
        cams,
        labels,
        labels,
        {"Male": torch.tensor([0, 0, 1, 0])},
        plan,
        torch.zeros(4, 3, 2, 2),
    )
    n = sums["cell_n:Male"][0]  # [label, value]
    assert n.tolist() == [[1, 0], [2, 1]]
    mean = sums["cell:Male"][0] / n.clamp_min(1)[..., None, None]
    assert mean[1, 0].tolist() == [[0.5, 0.5]]  # images 0 and 1
    assert mean[1, 1].tolist() == [[0.5, 0.5]]  # image 2
    assert torch.allclose(mean[0, 0], torch.tensor([[0.2, 0.4]], dtype=torch.float64))


def test_cell_means_equal_the_mean_of_each_images_own_map(results: Results, drawn: dict) -> None:
    """The pass's cell sums against the maps of all 48 images drawn one by one afterwards."""
    frame = results.frame
    order = torch.argsort(drawn["index"])
    maps = drawn["maps"][order].double()
    for i, name in enumerate(ATTRIBUTES):
        labels = torch.tensor(frame[f"y:{name}"].to_numpy() > 0.5)
        for group in PROTECTED:
            values = torch.tensor(frame[f"g:{group}"].to_numpy())
            for label in (0, 1):
                for value in (0, 1):
                    inside = (labels == label) & (values == value)
                    n = results.maps[f"cell_n:{group}"][i, label, value]
                    assert int(n) == int(inside.sum())
                    if inside.any():
                        mean = results.maps[f"cell:{group}"][i, label, value] / n
                        assert torch.allclose(mean, maps[inside, i].mean(0), atol=1e-5)


@pytest.fixture(scope="module")
def drawn(results: Results, tiny_checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every image of the tiny evaluation, drawn again by ``sample_maps`` in batches of 5."""
    return sample_maps(
        load_checkpoint(tiny_checkpoint), tiny_data(), results.plan, range(48), batch_size=5
    )


def test_samples_come_from_the_worst_mask_cell_wrong_predictions_first(results: Results) -> None:
    failing = [
        {"check": "mask_score", "attribute": "Smiling", "other": "mouth", "status": "FAILED"}
    ]
    cell = sample_cells(results, failing)["Smiling"]
    table = results.tables["mask_score"]
    rows = table[(table["attribute"] == "Smiling") & (table["resolution"] == "grid")]
    rows = rows[(rows["label"] == 1) & (rows["group"] != "") & (rows["n"] >= 1)]
    worst = rows.loc[rows["lift"].idxmin()]
    assert (cell["label"], cell["group"], cell["value"]) == (
        1,
        worst["group"],
        worst["group_value"],
    )
    assert "mask_score[Smiling-mouth]" in cell["reason"]
    assert_wrong_first(results, "Smiling", cell)


def test_samples_come_from_the_failing_groups_worst_accuracy_cell(results: Results) -> None:
    failing = [
        {"check": "accuracy", "attribute": "Young", "other": None, "status": "FAILED"},
        {
            "check": "worst_group_accuracy",
            "attribute": "Young",
            "other": "Male",
            "status": "FAILED",
        },
    ]
    cell = sample_cells(results, failing)["Young"]
    frame = results.frame
    truth, guess = frame["y:Young"] > 0.5, frame["z:Young"] > 0
    accuracy = {
        (y, v): float((truth == guess)[(truth == y) & (frame["g:Male"] == v)].mean())
        for y in (0, 1) for v in (0, 1) if ((truth == y) & (frame["g:Male"] == v)).any()
    }  # fmt: skip
    assert (cell["label"], cell["value"]) == min(accuracy, key=accuracy.get)
    assert cell["group"] == "Male" and "Male" in cell["reason"]
    assert_wrong_first(results, "Young", cell)


def test_without_a_failure_samples_come_from_the_lowest_accuracy_cell(results: Results) -> None:
    cell = sample_cells(results, [])["Young"]
    cells = results.tables["group_cells"]
    mine = cells[(cells["attribute"] == "Young") & ~cells["excluded"]]
    lowest = mine.loc[mine["accuracy"].idxmin()]
    assert (cell["group"], cell["label"], cell["value"]) == (
        lowest["group"],
        lowest["label"],
        lowest["value"],
    )
    assert_wrong_first(results, "Young", cell)


def assert_wrong_first(results: Results, name: str, cell: dict[str, Any]) -> None:
    """The cell's samples: up to 8 of its images, its wrong predictions first, each part in order."""
    frame = results.frame.set_index("index")
    inside = (frame[f"y:{name}"] > 0.5) == cell["label"]
    if cell["group"] is not None:
        inside &= frame[f"g:{cell['group']}"] == cell["value"]
    wrong = ((frame[f"z:{name}"] > 0) != (frame[f"y:{name}"] > 0.5)) & inside
    expected = sorted(frame.index[wrong])[:8]
    expected += sorted(frame.index[inside & ~wrong])[: 8 - len(expected)]
    assert cell["indices"] == expected
    assert (cell["n"], cell["wrong"]) == (int(inside.sum()), int(wrong.sum()))


def test_figures_show_predicted_class_means_cells_and_outlined_samples(
    results: Results, tiny_checkpoint: Path
) -> None:
    outcomes = outcomes_for(results, "tiny")
    cells = sample_cells(results, outcomes)
    wanted = sorted({i for c in cells.values() for i in c["indices"]})
    drawn = sample_maps(load_checkpoint(tiny_checkpoint), tiny_data(), results.plan, wanted)
    figures = images.model_figures(results, cells, drawn)
    frame = results.frame
    assert list(figures) == list(ATTRIBUTES)
    for name, figure in figures.items():
        predicted = (frame[f"z:{name}"] > 0).astype(int)
        assert [t["n"] for t in figure["means"]] == [int((predicted == v).sum()) for v in (0, 1)]
        assert all((t["uri"] is None) == (t["n"] == 0) for t in figure["means"])
        assert [g["group"] for g in figure["cells"]] == sorted(PROTECTED)
        for grid in figure["cells"]:
            group_cells = results.tables["group_cells"]
            for row in grid["rows"]:
                for tile in row["tiles"]:
                    match = group_cells[(group_cells["attribute"] == name) & (group_cells["group"] == grid["group"])
                                        & (group_cells["label"] == row["label"]) & (group_cells["value"] == tile["value"])]  # fmt: skip
                    assert tile["n"] == (int(match["n"].iloc[0]) if len(match) else 0)
        samples = figure["samples"]
        assert [s["index"] for s in samples] == cells[name]["indices"]
        column = list(results.plan.mapped).index(name)
        where = {int(x): k for k, x in enumerate(drawn["index"].tolist())}
        for sample in samples:
            regions = drawn["regions"][where[sample["index"]], column][None]
            pixels = torch.tensor(
                np.asarray(Image.open(io.BytesIO(base64.b64decode(sample["uri"].split(",", 1)[1]))))
            )
            cyan = (pixels == torch.tensor(images.OUTLINE, dtype=torch.uint8)).all(-1)
            assert torch.equal(cyan, images.outline(regions)[0])


# --- chart geometry ---------------------------------------------------------------------------


def test_scatter_maps_the_unit_square_onto_the_plot() -> None:
    points = [{"x": 0.5, "y": 0.25, "low": 0.0, "high": 1.0}, {"x": None, "y": 0.3}]
    chart = svg.scatter(points, "x", "y", threshold=0.6)
    # Default 440 x 320 with margins left 56, right 20, top 16, bottom 46: x 56..420, y 274..16.
    [point] = chart["points"]
    assert (point["x"], point["y"], point["low"], point["high"]) == (238.0, 209.5, 274.0, 16.0)
    assert chart["threshold"] == pytest.approx(274 - 0.6 * 258)
    assert chart["missing"] == [points[1]]
    assert svg.scale(2.0, 0, 1, 10, 20) == 20 and svg.scale(-1.0, 0, 1, 10, 20) == 10


def test_scatter_labels_of_nearby_points_do_not_overlap() -> None:
    chart = svg.scatter(
        [{"x": 0.2, "y": 0.2}, {"x": 0.21, "y": 0.2}, {"x": 0.9, "y": 0.2}], "x", "y"
    )
    near = sorted(p["label_y"] for p in chart["points"] if p["point"]["x"] < 0.5)
    assert near[1] - near[0] >= svg.LABEL_HEIGHT
    far = next(p for p in chart["points"] if p["point"]["x"] > 0.5)
    assert far["label_y"] == far["y"] + 4


def test_bars_grow_with_the_value_and_flag_those_under_the_threshold() -> None:
    rows = [{"value": 0.2, "low": 0.1, "high": 0.3}, {"value": 0.8}, {"value": None}]
    chart = svg.bars(rows, threshold=0.5)
    first, second, empty = chart["bars"]
    x0, x1 = chart["plot"]["x0"], chart["plot"]["x1"]
    assert first["end"] == pytest.approx(x0 + 0.2 * (x1 - x0))
    assert second["end"] == pytest.approx(x0 + 0.8 * (x1 - x0))
    assert (first["below"], second["below"], empty["below"], empty["end"]) == (
        True,
        False,
        False,
        None,
    )
    assert second["y"] - first["y"] == svg.BAR_ROW
    assert chart["height"] == svg.BAR_TOP + 3 * svg.BAR_ROW + svg.BAR_BOTTOM
