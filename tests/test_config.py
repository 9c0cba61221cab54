"""Profiles, overrides and lab metadata (labkit.config)."""

from __future__ import annotations

import pytest

from labkit.config import apply_overrides, get_lab, leaf_keys, list_labs, load_profile
from labkit.errors import LabError

PROFILE = {
    "seed": 1,
    "device": "cpu",
    "data": {"seed": 16},
    "training": {"learning_rate": 1e-3, "num_train_epochs": 2, "fp16": False, "dropout": 0.1},
    "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"], "dropout": 0.05},
}


def test_leaf_keys_are_dotted_paths():
    assert "training.learning_rate" in leaf_keys(PROFILE)
    assert "lora.target_modules" in leaf_keys(PROFILE)


def test_override_by_unique_leaf_name_and_by_path():
    config, applied = apply_overrides(PROFILE, ["learning_rate=0", "lora.r=8", "seed=3"])
    assert config["seed"] == 3 and config["data"]["seed"] == 16  # a full path wins over a leaf name
    assert config["training"]["learning_rate"] == 0.0 and isinstance(config["training"]["learning_rate"], float)
    assert config["lora"]["r"] == 8
    assert applied == {"training.learning_rate": 0.0, "lora.r": 8, "seed": 3}
    assert PROFILE["training"]["learning_rate"] == 1e-3  # the profile itself is untouched


def test_override_parses_yaml_scalars_and_exponent_floats():
    config, _ = apply_overrides(PROFILE, ["learning_rate=3e-4", "fp16=true", "target_modules=[q_proj,k_proj]"])
    assert config["training"]["learning_rate"] == pytest.approx(3e-4)
    assert config["training"]["fp16"] is True
    assert config["lora"]["target_modules"] == ["q_proj", "k_proj"]
    for written in ("target_modules=q_proj,k_proj", "target_modules=[q_proj, k_proj]", "target_modules=q_proj, k_proj"):
        assert apply_overrides(PROFILE, [written])[0]["lora"]["target_modules"] == ["q_proj", "k_proj"], written
    assert apply_overrides(PROFILE, ["target_modules=q_proj"])[0]["lora"]["target_modules"] == ["q_proj"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learnin_rate=0", "is not a setting"),
        ("dropout=0", "ambiguous, it matches training.dropout, lora.dropout"),
        ("learning_rate", "key=value"),
        ("fp16=maybe", "expected a bool"),
        ("target_modules=[q_proj,", r"target_modules='\[q_proj,' is not a value .*write a list as \[a, b\] or a,b"),
        ("tickets/train.tsv", "needs quotes"),
    ],
)
def test_bad_override_is_a_clear_error(override, message):
    with pytest.raises(LabError, match=message) as info:
        apply_overrides(PROFILE, [override])
    if "not a setting" in message:
        assert "Did you mean learning_rate" in str(info.value)
        assert "training.learning_rate" in str(info.value)  # lists the valid keys


def test_unknown_lab_lists_known_labs():
    with pytest.raises(LabError, match="unknown lab 'nope'.*whisper-lora"):
        get_lab("nope")


def test_unknown_profile_lists_profiles():
    with pytest.raises(LabError, match="no profile 'huge'.*smoke, full"):
        load_profile(get_lab("whisper-lora"), "huge")


def test_every_lab_has_metadata_and_its_files(lab):
    assert lab.chapter > 0 and lab.title and lab.summary
    for name in ("requirements.in", "requirements.txt", "README.md", lab.entrypoint):
        assert (lab.dir / name).is_file(), f"{lab.name} lacks {name}"
    for variant in (None, *lab.variants):
        assert lab.dockerfile(variant).is_file() and lab.requirements(variant).is_file()
    for profile in lab.profiles:
        assert lab.profile_path(profile).is_file()
        assert lab.expected_path(profile).is_file()


def test_profiles_differ_only_in_values(lab):
    keys = {profile: sorted(leaf_keys(load_profile(lab, profile)[0])) for profile in lab.profiles}
    first = keys[lab.profiles[0]]
    assert all(k == first for k in keys.values()), f"{lab.name} profiles hold different keys"


def test_labs_are_listed():
    assert "whisper-lora" in [lab.name for lab in list_labs()]
