"""Planning: with no config a model is scanned whole (every labelled output, every protected
attribute the data has, regions from the part map); configured scopes win; gaps are said."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_biascheck.config import ModelSettings, Settings
from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.data.regions import UNSCORED_REGIONS
from pytest_biascheck.data.synth_birds import SynthBirds
from pytest_biascheck.data.synth_faces import ATTRIBUTE_REGIONS, SynthFaces
from pytest_biascheck.model import ModelSpec, load_checkpoint, save_checkpoint
from pytest_biascheck.nets import SmallResNet
from pytest_biascheck.planning import plan_for
from tests.conftest import TINY_ATTRIBUTES


class Unlabelled(BiasDataset):
    """Labels for two of the tiny model's outputs, no group column, no protected label."""

    attributes = ("Smiling", "Mouth_Slightly_Open")

    def __len__(self) -> int:
        return 4


def test_no_config_scans_every_output_across_every_nuisance(tiny_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_checkpoint)
    scope, plan = plan_for(model, SynthFaces(n=8, image_size=32), Settings())
    assert list(scope.attributes) == list(TINY_ATTRIBUTES)
    assert list(scope.protected) == ["Male", "Young", "Black_Hair"]
    # Smiling has its mouth; Male and Young are drawn on the skin, which is too large to score.
    assert scope.regions == {"Smiling": "mouth"}
    assert ATTRIBUTE_REGIONS["Male"] in UNSCORED_REGIONS
    assert plan.protected == {"Male": 2, "Young": 2, "Black_Hair": 2}
    assert scope.notes == ()


def test_group_columns_and_the_corner_mark_are_protected_by_default(tmp_path: Path) -> None:
    spec = ModelSpec(attributes=("Waterbird",), input_size=(3, 32, 32), target_layer="layer4")
    path = save_checkpoint(SmallResNet(1, widths=(8, 8, 8, 8)), spec, tmp_path / "birds.pt",
                           "biascheck.small_resnet", {"widths": [8, 8, 8, 8]})  # fmt: skip
    model = load_checkpoint(path)
    plain, marked = SynthBirds(n=8, split="test"), SynthBirds(n=8, split="test", mark=0.5)
    assert plan_for(model, plain, Settings())[0].protected == ["place"]
    scope = plan_for(model, marked, Settings())[0]
    assert scope.protected == ["place", "mark"] and scope.regions == {"Waterbird": "bird"}


def test_configured_scope_wins_and_may_name_an_unscored_region(tiny_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_checkpoint)
    own = ModelSettings(
        attributes=["Male"], protected=["Young*Black_Hair"], regions={"Male": "skin"}
    )
    scope, _ = plan_for(model, SynthFaces(n=8, image_size=32), Settings(models={"tiny": own}))
    assert (list(scope.attributes), list(scope.protected)) == (["Male"], ["Young*Black_Hair"])
    assert scope.regions == {"Male": "skin"}


def test_what_a_scan_cannot_check_is_said_in_one_line_each(tiny_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_checkpoint)
    scope, plan = plan_for(model, Unlabelled(), Settings())
    assert list(scope.attributes) == ["Smiling"] and list(scope.protected) == []
    assert plan.protected == {}
    no_groups, unlabelled = scope.notes
    assert no_groups.startswith("tiny: the data has no protected attribute")
    assert "set protected under [tool.biascheck.models.tiny]" in no_groups
    assert unlabelled == "tiny: outputs Male, Young have no label in the data and are not checked"
    assert all("\n" not in note for note in scope.notes)


def test_notes_name_the_table_as_the_config_file_writes_it(tiny_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_checkpoint)
    scope, _ = plan_for(model, Unlabelled(), Settings(source="/project/biascheck.toml"))
    assert "set protected under [models.tiny] " in scope.notes[0]


@pytest.mark.parametrize("labels", [("Male",), ("Young", "Smiling"), ()])
def test_conventional_protected_labels_are_used_where_the_data_has_them(labels) -> None:
    class Data(BiasDataset):
        attributes = ("Eyeglasses", *labels)
        group_names = ("site",)

    assert Data().default_protected() == (*[a for a in ("Male", "Young") if a in labels], "site")
