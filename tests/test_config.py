"""Config: valid files parse into typed settings; unknown keys and wrong types name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_biascheck.checks import catalogue
from pytest_biascheck.config import Settings, find_config, load_settings, validate_thresholds
from pytest_biascheck.errors import BiascheckError

VALID = """
[tool.other]
x = 1

[tool.biascheck]
data = "synthfaces:n=500"
batch_size = 32
bootstrap = 200
min_group_share = 0
allow_imports = ["pkg.mod:Net"]
thresholds = { accuracy = 0.9 }

[tool.biascheck.models.faces_biased]
attributes = ["Smiling"]
protected = ["Black_Hair"]
regions = { Smiling = "mouth" }
thresholds = { accuracy = 0.7 }
"""


def test_pyproject_table_parses_to_typed_settings(tmp_path):
    (tmp_path / "pyproject.toml").write_text(VALID)
    path = find_config(tmp_path)
    settings = load_settings(path)
    assert path == tmp_path / "pyproject.toml"
    assert settings.data == "synthfaces:n=500"
    assert settings.batch_size == 32 and settings.bootstrap == 200
    assert settings.min_group_share == 0.0 and isinstance(settings.min_group_share, float)
    model = settings.for_model("faces_biased")
    assert model.attributes == ["Smiling"] and model.regions == {"Smiling": "mouth"}
    assert model.thresholds == {"accuracy": 0.7}
    assert settings.for_model("other").attributes == []
    validate_thresholds(settings, catalogue())


def test_biascheck_toml_wins_and_pyproject_without_table_is_ignored(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.other]\nx = 1\n")
    assert find_config(tmp_path) is None
    (tmp_path / "biascheck.toml").write_text('batch_size = 8\n[models.m]\nprotected = ["Male"]\n')
    settings = load_settings(find_config(tmp_path))
    assert settings.batch_size == 8 and settings.for_model("m").protected == ["Male"]
    assert load_settings(None) == Settings()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[tool.biascheck]\nbatch_sise = 3\n",
            "unknown key 'tool.biascheck.batch_sise'; did you mean 'batch_size'?",
        ),
        (
            "[tool.biascheck.models.m]\nprotectd = []\n",
            "unknown key 'tool.biascheck.models.m.protectd'; did you mean 'protected'?",
        ),
        (
            "[tool.biascheck]\nbatch_size = '64'\n",
            "tool.biascheck.batch_size must be int, got str '64'",
        ),
        (
            "[tool.biascheck]\nbatch_size = true\n",
            "tool.biascheck.batch_size must be int, got bool True",
        ),
        (
            "[tool.biascheck]\nallow_imports = 'x'\n",
            "tool.biascheck.allow_imports must be a list, got str",
        ),
        (
            "[tool.biascheck]\nthresholds = { accuracy = 'high' }\n",
            "tool.biascheck.thresholds.accuracy must be float",
        ),
        (
            "[tool.biascheck.models.m]\nregions = { Smiling = 3 }\n",
            "tool.biascheck.models.m.regions.Smiling must be str",
        ),
        ("[tool.biascheck\n", "is not valid TOML"),
        (
            "[tool.biascheck]\nmin_group_share = 5\n",
            "min_group_share must be a fraction of the images in [0, 1) (0.01 = 1%), got 5.0",
        ),
        (
            "[tool.biascheck.models.m]\nmin_group_share = -0.1\n",
            "models.m.min_group_share must be a fraction of the images in [0, 1)",
        ),
    ],
)
def test_bad_config_names_key_file_and_fix(tmp_path, text, expected):
    path = tmp_path / "pyproject.toml"
    path.write_text(text)
    with pytest.raises(BiascheckError) as exc:
        load_settings(path)
    assert expected in str(exc.value)
    assert str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_threshold_names_closest_check(tmp_path):
    path = tmp_path / "biascheck.toml"
    path.write_text("[models.m]\nthresholds = { acuracy = 0.5 }\n")
    settings = load_settings(path)
    with pytest.raises(
        BiascheckError, match=r"unknown key 'models.m.thresholds.acuracy'; did you mean 'accuracy'"
    ):
        validate_thresholds(settings, catalogue())


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(BiascheckError, match="does not exist; check --biascheck-config"):
        load_settings(tmp_path / "nope.toml")


def test_multiclass_label_metadata_and_group_share_per_model(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "biascheck.toml"
    path.write_text(
        'min_group_share = 0.02\nmetadata = "meta/all.csv"\n'
        '[models.hair]\nlabel = "hair_colour"\nprotected = ["Male*Young", "skin_tone"]\n'
        'min_group_share = 0\nmetadata = "/data/skin.csv"\nmetadata_id = "file"\n'
    )
    settings = load_settings(path)
    hair = settings.for_model("hair")
    assert hair.label == "hair_colour" and hair.protected == ["Male*Young", "skin_tone"]
    assert settings.min_share("hair") == 0.0 and settings.min_share("other") == 0.02
    assert settings.metadata_for("hair") == (Path("/data/skin.csv"), "file")
    assert settings.metadata_for("other") == (tmp_path / "conf" / "meta" / "all.csv", "image_id")
    assert Settings().metadata_for("any") is None and Settings().min_share("any") == 0.01
