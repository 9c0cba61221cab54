"""The lab's inputs are a profile value (``data.inputs``): the bundled file, the second set the test
suite runs (``lab.yaml`` ``foreign_data``), or your own; a malformed file is named with its key."""

from __future__ import annotations

import shlex
import wave

import pytest
import yaml

from labkit.config import get_lab, load_profile
from labkit.errors import LabError
from labkit.verify import fingerprint, load_expected

from run import DATA, load_inputs

LAB = get_lab("transformers-quickstart")
REPO = LAB.dir.parents[1]


def profile_inputs(profile: str, overrides: list[str] | None = None):
    return REPO / load_profile(LAB, profile, overrides)[0]["data"]["inputs"]


def texts_of(inputs: dict) -> set[str]:
    keys = ("sentiment", "ner", "generation", "tokenizer")
    return {t for k in keys for t in inputs[k]} | {inputs["qa"]["question"], inputs["qa"]["context"]}


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_expected_data_fingerprint_is_the_profiles_inputs(profile):
    """expected/<profile>.yaml names the inputs its data-bound values were set on: the bundled file
    and its clip, so a stale fingerprint (inputs changed, expected file not) fails here."""
    path = profile_inputs(profile)
    assert path == DATA / "inputs.yaml"
    inputs = load_inputs(path)
    assert inputs["asr"] == DATA / "speech_zh.mp3"
    want = load_expected(LAB.expected_path(profile))["data"]["fingerprint"]
    assert fingerprint({"inputs": path, "asr": inputs["asr"]}) == want


def test_the_foreign_inputs_are_other_data_of_the_same_shape():
    path = profile_inputs("smoke", shlex.split(LAB.meta["foreign_data"]))
    assert path == DATA / "foreign" / "inputs.yaml"
    foreign, bundled = load_inputs(path), load_inputs(DATA / "inputs.yaml")
    assert not texts_of(foreign) & texts_of(bundled)
    assert [len(foreign[k]) for k in ("sentiment", "ner", "tokenizer")] == [3, 2, 4]
    assert foreign["qa"]["context"].endswith("sailed south on the Aurora.")  # the answer ends the context
    with wave.open(str(foreign["asr"])) as clip:  # a WAV at 8 kHz: the run resamples it to 16 kHz
        assert (clip.getframerate(), clip.getnchannels(), clip.getnframes()) == (8000, 1, 9600)
    smoke = load_expected(LAB.expected_path("smoke"))["data"]["fingerprint"]
    assert fingerprint({"inputs": path, "asr": foreign["asr"]}) != smoke


def write_inputs(tmp_path, **changes) -> str:
    inputs = {**yaml.safe_load((DATA / "inputs.yaml").read_text(encoding="utf-8")), **changes}
    (tmp_path / "speech_zh.mp3").write_bytes((DATA / "speech_zh.mp3").read_bytes())
    path = tmp_path / "inputs.yaml"
    path.write_text(yaml.safe_dump(inputs, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sentiment": ["fine", ""]}, r"sentiment\[1\]: each must be a non-empty text"),
        ({"ner": "Ada Lovelace"}, r"ner \(not a list of texts\)"),
        ({"tokenizer": ["ok", 3]}, r"tokenizer\[1\]"),
        ({"qa": {"question": "Where?", "context": None}}, r"qa\.context"),
        ({"asr": "missing.wav"}, r"asr audio file .*missing\.wav not found"),
    ],
)
def test_a_malformed_inputs_file_is_named_with_its_key(tmp_path, changes, message):
    path = write_inputs(tmp_path, **changes)
    with pytest.raises(LabError, match=rf"{path}: .*{message}"):
        load_inputs(path)


def test_a_missing_key_or_file_is_named(tmp_path):
    path = write_inputs(tmp_path)
    inputs = yaml.safe_load(path.read_text(encoding="utf-8"))
    del inputs["qa"]
    path.write_text(yaml.safe_dump(inputs), encoding="utf-8")
    has = "asr, generation, ner, sentiment, tokenizer"  # yaml.safe_dump sorts the keys
    with pytest.raises(LabError, match=rf"inputs.yaml lacks key\(s\) qa; it has: {has}$"):
        load_inputs(path)
    with pytest.raises(LabError, match=r"inputs file .*nope.yaml not found \(data.inputs\)"):
        load_inputs(tmp_path / "nope.yaml")
    path.write_text("sentiment: [unclosed\n", encoding="utf-8")
    with pytest.raises(LabError, match=r"inputs.yaml is not valid YAML: .*flow sequence"):
        load_inputs(path)


def test_an_own_inputs_file_resolves_its_clip_beside_it(tmp_path):
    path = write_inputs(tmp_path, generation=["Another prompt"])
    inputs = load_inputs(path)
    assert inputs["asr"] == tmp_path / "speech_zh.mp3" and inputs["generation"] == ["Another prompt"]


def test_readme_own_inputs_command_is_the_foreign_run_the_suite_makes():
    """tests/test_labs.py runs lab.yaml's foreign_data through the smoke profile and verifies it; the
    README's command must be that run, word for word, so it is known to run as written."""
    lines = [
        line.strip()
        for line in (LAB.dir / "README.md").read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("make lab-transformers-quickstart") and "data.inputs=" in line
    ]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0].split("#")[0])
    settings = dict(w.split("=", 1) for w in words[2:])
    assert settings["PROFILE"] == "smoke" and settings["RUNTIME"] == "native"
    assert shlex.split(settings["SET"]) == shlex.split(LAB.meta["foreign_data"])
