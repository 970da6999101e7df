"""``biascheck.json`` follows the JSON Schema shipped in the package: a written report validates,
and the schema refuses what the report never writes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from pytest_biascheck.report import JSON_SCHEMA, write_report
from tests.conftest import report_validator
from tests.report.test_report import META, evaluate_tiny, sample_entries


@pytest.fixture(scope="module")
def validator() -> object:
    return report_validator()


@pytest.fixture(scope="module")
def written(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    entries = sample_entries(evaluate_tiny(tiny_checkpoint))
    return write_report(entries, tmp_path_factory.mktemp("report"), META)


def test_the_schema_is_shipped_with_the_package():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["pytest_biascheck"]
    relative = JSON_SCHEMA.relative_to(Path(__file__).parents[2] / "pytest_biascheck")
    assert any(relative.match(pattern) for pattern in data)


def test_a_written_report_validates(validator, written):
    document = json.loads(written[0].read_text())
    assert list(validator.iter_errors(document)) == []


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d.pop("summary"), "'summary' is a required property"),
        (lambda d: d["models"][0]["checks"][0].update(status="ok"), "'ok' is not one of"),
        (lambda d: d["models"][0]["checks"][0].update(value="0.5"), "'0.5' is not of type"),
        (lambda d: d["models"][0].update(sha256="xyz"), "'xyz' does not match"),
        (lambda d: d["summary"].update(failed=-1), "-1 is less than the minimum of 0"),
    ],
)
def test_the_schema_refuses_what_the_report_never_writes(validator, written, change, where):
    document = copy.deepcopy(json.loads(written[0].read_text()))
    change(document)
    messages = [error.message for error in validator.iter_errors(document)]
    assert any(where in message for message in messages), messages
