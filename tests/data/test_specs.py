"""Data specs: ``open_data`` builds the dataset a ``--biascheck-data`` string names, shortcuts included."""

from __future__ import annotations

import pytest

from pytest_biascheck.data import open_data, parse_spec
from pytest_biascheck.data.synth_faces import ATTRIBUTES, HAIR_COLOURS
from pytest_biascheck.errors import BiascheckError


def test_repeated_keys_collect_their_values_and_values_are_typed():
    scheme, path, params = parse_spec("synthfaces:n=20,corr=A~B@0.9,corr=C~D@0.8,x=0.5,on=true")
    assert (scheme, path) == ("synthfaces", None)
    assert params == {"n": 20, "corr": ["A~B@0.9", "C~D@0.8"], "x": 0.5, "on": True}


def test_a_correlation_from_the_command_line_keeps_both_frequencies():
    data = open_data(
        "synthfaces:n=20000,corr=Eyeglasses~Male@0.95,freq=Eyeglasses@0.3,freq=Male@0.3", "train"
    )
    glasses = data.labels[:, ATTRIBUTES.index("Eyeglasses")]
    male = data.labels[:, ATTRIBUTES.index("Male")]
    assert abs(glasses.mean().item() - 0.3) < 0.01 and abs(male.mean().item() - 0.3) < 0.01
    assert abs((glasses == male).float().mean().item() - 0.95) < 0.01
    assert data.notes()[0].startswith("Eyeglasses~Male: requested 0.95")


def test_mcc_and_hair_frequency_and_appearance_knobs():
    data = open_data("synthfaces:n=20000,mcc=Smiling~Black_Hair@0.5,freq=Black_Hair@0.5", "train")
    real = data.realised_correlations()[("Smiling", "Black_Hair")]
    assert abs(real["mcc"] - 0.5) < 0.03
    hair = data.labels[:, [ATTRIBUTES.index(h) for h in HAIR_COLOURS]]
    assert abs(hair[:, 0].mean().item() - 0.5) < 0.01
    looked = open_data("synthfaces:n=4,smile_curvature=0.3,noise=0.01", "test")
    assert (looked.appearance.smile_curvature, looked.appearance.noise) == (0.3, 0.01)


def test_the_biased_preset_is_possible_with_kept_frequencies():
    data = open_data("synthfaces:preset=biased,n=20000", "train")
    real = data.realised_correlations()[("Smiling", "Black_Hair")]
    assert abs(real["agreement"] - 0.95) < 0.01 and abs(real["frequency_second"] - 0.5) < 0.01


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synthfaces:corr=Eyeglasses-Male@0.9", "is not FIRST~SECOND@STRENGTH"),
        ("synthfaces:corr=Eyeglasses~Male@high", "is not FIRST~SECOND@STRENGTH"),
        ("synthfaces:freq=Eyeglasses", "is not NAME@FREQUENCY"),
        ("synthfaces:corr=Eyeglasses~Male@0.95", r"impossible .* allow 0\.400\.\.0\.700"),
        ("synthfaces:bogus=1", "unknown key 'bogus'; synthfaces takes"),
        ("synthfaces:n=10,n=20", "'n' is given twice; keep one"),
        ("synthfaces:preset=weird", "preset 'weird' is unknown"),
        ("synthbirds:mark=1.5", r"mark=1\.5 must lie in \[0, 1\]"),
    ],
)
def test_bad_specs_are_one_line_errors_naming_the_spec(spec, message):
    with pytest.raises(BiascheckError, match=message) as error:
        open_data(spec, "train")
    assert "\n" not in str(error.value) and spec.split(":")[0] in str(error.value)
