"""Unit tests of the whisper-lora lab, run in its environment (native venv or image).

Data loading and its errors, resampling, the collator's label masking, the tiny model, LoRA's
trainable-parameter count (checked against the full profile's expected value), device selection.
"""

from __future__ import annotations

import csv
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from labkit.config import REPO_ROOT, get_lab, load_profile
from labkit.errors import LabError
from labkit.lab.audio import decode
from labkit.lab.device import select_device
from labkit.verify import load_expected

from data import DataCollatorSpeechSeq2SeqWithPadding, load_common_voice_dir, load_splits, prepare_example
from evaluate_asr import cer, normalize

LAB = get_lab("whisper-lora")
SMOKE_CV = LAB.dir / "data" / "smoke" / "cv-corpus-smoke" / "zh-CN"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import WhisperProcessor

    from labkit.lab.tiny import build_tiny_whisper

    path = build_tiny_whisper(tmp_path_factory.mktemp("tiny"), ["今天天气很好", "谢谢你的帮助"], seed=0)
    return path, WhisperProcessor.from_pretrained(path, language="chinese", task="transcribe")


@pytest.fixture
def cv_copy(tmp_path):
    dst = tmp_path / "zh-CN"
    shutil.copytree(SMOKE_CV, dst)
    return dst


def smoke_data_cfg(path) -> dict:
    cfg = load_profile(LAB, "smoke")[0]["data"]
    return {**cfg, "path": str(path)}


def test_loader_reads_the_release_layout_and_resamples_to_16k(cv_copy):
    dsd, dropped = load_splits(smoke_data_cfg(cv_copy), LAB.dir)
    assert dropped == {}
    assert len(dsd["train"]) == 9 and len(dsd["test"]) == 3  # train+dev / test
    assert set(dsd["train"].column_names) == {"audio", "sentence", "path"}  # unused columns dropped
    row = dsd["test"][0]
    assert row["audio"] == str(cv_copy / "clips" / row["path"])  # decoded later, by labkit.lab.audio
    native, rate = sf.read(row["audio"])
    assert rate == 22050
    clip = decode(row["audio"], 16000)
    assert clip.sampling_rate == 16000 and clip.source_rate == 22050 and clip.array.dtype == np.float32
    assert len(clip.array) == pytest.approx(len(native) * 16000 / 22050, rel=0.001)
    assert clip.duration_s == pytest.approx(len(native) / 22050, abs=0.001)


def test_sub_sampling_is_a_seeded_shuffle(cv_copy):
    cfg = {**smoke_data_cfg(cv_copy), "train_samples": 4, "eval_samples": 2}
    first, second = load_splits(cfg, LAB.dir)[0], load_splits(cfg, LAB.dir)[0]
    assert len(first["train"]) == 4 and len(first["test"]) == 2
    assert list(first["train"]["path"]) == list(second["train"]["path"])


def test_missing_column_lists_the_columns_there(cv_copy):
    tsv = cv_copy / "dev.tsv"
    rows = list(csv.reader(tsv.open(encoding="utf-8"), delimiter="\t"))
    rows[0][rows[0].index("sentence")] = "text"
    with tsv.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter="\t").writerows(rows)
    with pytest.raises(LabError, match=r"dev.tsv lacks column\(s\) sentence; it has: client_id, path, text"):
        load_common_voice_dir(cv_copy, ["train", "dev"])


def test_missing_audio_file_is_named(cv_copy):
    (cv_copy / "clips" / "common_voice_zh-CN_smoke_011.mp3").unlink()
    with pytest.raises(LabError, match="missing from .*clips: common_voice_zh-CN_smoke_011.mp3"):
        load_common_voice_dir(cv_copy, ["test"])


def rewrite_sentences(tsv, sentences: dict[int, str]) -> None:
    """Replace the ``sentence`` of data rows (0-based) of a Common Voice TSV."""
    rows = list(csv.reader(tsv.open(encoding="utf-8"), delimiter="\t"))
    col = rows[0].index("sentence")
    for i, text in sentences.items():
        rows[i + 1][col] = text
    with tsv.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter="\t").writerows(rows)


def test_empty_transcript_is_named_by_file_line_and_column_or_dropped(cv_copy):
    rewrite_sentences(cv_copy / "dev.tsv", {1: ""})
    with pytest.raises(LabError, match=r"dev.tsv: column 'sentence' is empty at line 3\. .*data.bad_text=drop"):
        load_splits(smoke_data_cfg(cv_copy), LAB.dir)
    dsd, dropped = load_splits({**smoke_data_cfg(cv_copy), "bad_text": "drop"}, LAB.dir)
    assert dropped == {"dev": {"sentence": 1}} and len(dsd["train"]) == 8 and len(dsd["test"]) == 3


def test_transcripts_that_are_words_like_null_stay_text(cv_copy):
    rewrite_sentences(cv_copy / "train.tsv", {0: "NA", 1: "null", 2: "None"})
    dsd, dropped = load_splits(smoke_data_cfg(cv_copy), LAB.dir)
    assert dropped == {} and {"NA", "null", "None"} <= set(dsd["train"]["sentence"])


def test_transcripts_longer_than_the_decoder_fail_or_are_dropped():
    from datasets import Dataset

    from data import check_label_lengths

    ds = Dataset.from_dict({"path": ["a.mp3", "b.mp3", "c.mp3"], "labels": [[1] * 10, [1] * 449, [1] * 448]})
    with pytest.raises(LabError, match=r"transcript of b.mp3 is 449 tokens; Whisper's decoder holds 448.*1 clip"):
        check_label_lengths(ds, 448, "fail")
    kept, dropped = check_label_lengths(ds, 448, "drop")
    assert dropped == 1 and kept["path"] == ["a.mp3", "c.mp3"]


def test_missing_tsv_and_folder_say_what_to_do(tmp_path, cv_copy):
    with pytest.raises(LabError, match="does not exist. Download the zh-CN release"):
        load_common_voice_dir(tmp_path / "nowhere", ["train"])
    (cv_copy / "test.tsv").unlink()
    with pytest.raises(LabError, match="test.tsv not found"):
        load_common_voice_dir(cv_copy, ["test"])


def test_unreadable_audio_file_is_named(cv_copy, tiny):
    (cv_copy / "clips" / "common_voice_zh-CN_smoke_012.mp3").write_bytes(b"not an mp3 at all" * 10)
    dsd, _ = load_splits(smoke_data_cfg(cv_copy), LAB.dir)
    with pytest.raises(LabError, match="clips/common_voice_zh-CN_smoke_012.mp3 is not an audio file libsndfile can"):
        dsd["test"].map(prepare_example, fn_kwargs={"processor": tiny[1], "sampling_rate": 16000})


def test_prepare_gives_80x3000_features_and_prefixed_labels(cv_copy, tiny):
    _, processor = tiny
    dsd, _ = load_splits(smoke_data_cfg(cv_copy), LAB.dir)
    row = prepare_example(dsd["test"][2], processor, 16000)
    assert np.asarray(row["input_features"]).shape == (80, 3000)
    assert row["source_rate"] == 22050 and 0.5 < row["duration_s"] < 10
    tokens = processor.tokenizer.convert_ids_to_tokens(row["labels"])
    assert tokens[:4] == ["<|startoftranscript|>", "<|zh|>", "<|transcribe|>", "<|notimestamps|>"]
    assert tokens[-1] == "<|endoftext|>"
    assert processor.tokenizer.decode(row["labels"], skip_special_tokens=True) == "谢谢你的帮助。"


def test_collator_pads_labels_with_minus_100_and_drops_the_start_token(tiny):
    _, processor = tiny
    sot = processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    short = processor.tokenizer("谢谢").input_ids
    long = processor.tokenizer("今天天气很好").input_ids
    features = [{"input_features": np.zeros((80, 3000), np.float32), "labels": ids} for ids in (short, long)]
    batch = DataCollatorSpeechSeq2SeqWithPadding(processor, sot)(features)
    assert batch["input_features"].shape == (2, 80, 3000)
    labels = batch["labels"]
    assert labels.shape == (2, len(long) - 1)
    assert labels[0, : len(short) - 1].tolist() == short[1:]
    assert (labels[0, len(short) - 1 :] == -100).all()
    assert labels[1].tolist() == long[1:]
    assert not (labels == sot).any()


def test_collator_keeps_labels_without_a_leading_start_token(tiny):
    _, processor = tiny
    sot = processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    ids = processor.tokenizer("谢谢").input_ids[1:]
    batch = DataCollatorSpeechSeq2SeqWithPadding(processor, sot)(
        [{"input_features": np.zeros((80, 3000)), "labels": ids}]
    )
    assert batch["labels"][0].tolist() == ids


def lora_params(config, r, targets=("q_proj", "v_proj")) -> int:
    """LoRA adds A (r x d_in) and B (d_out x r) per targeted projection: encoder self-attention,
    decoder self- and cross-attention, each d_model -> d_model."""
    per_layer = config.encoder_layers * 1 + config.decoder_layers * 2
    return per_layer * len(targets) * r * 2 * config.d_model


def test_int8_lora_model_trains_only_the_adapter(tiny):
    from train import add_lora, load_base_model

    path, _ = tiny
    model = add_lora(load_base_model(str(path), True, "cpu"), load_profile(LAB, "smoke")[0]["lora"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == lora_params(model.config, r=4) == 6144
    assert {type(m).__name__ for m in model.modules()} >= {"Linear8bitLt"}
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_full_profile_expected_trainable_params_match_whisper_large_v2():
    from transformers import WhisperConfig

    # openai/whisper-large-v2 config.json: d_model 1280, 32 encoder and 32 decoder layers.
    large_v2 = WhisperConfig(d_model=1280, encoder_layers=32, decoder_layers=32)
    expected = load_expected(LAB.expected_path("full"))["metrics"]["lora.trainable_params"]["equals"]
    assert lora_params(large_v2, r=load_profile(LAB, "full")[0]["lora"]["r"]) == expected == 1_966_080


def test_cer_normalizes_punctuation_and_counts_characters():
    assert normalize("春天来了，花都开了。") == "春天来了花都开了"
    assert cer(["谢谢你的帮助。"], ["谢谢你的帮助"]) == 0.0
    assert cer(["谢谢你的帮助"], ["谢谢你帮助"]) == pytest.approx(1 / 6)


def test_full_profile_without_an_accelerator_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    with pytest.raises(LabError, match="needs a CUDA GPU or an Ascend NPU.*PROFILE=smoke"):
        select_device(load_profile(LAB, "full")[0]["device"])
    assert select_device("auto") == "cpu"


def test_bench_reports_label_tokens_and_the_profile_batch():
    import bench

    b = bench.make("tiny", "cpu")
    assert b.default_batch == 4 and b.tokens_per_sample == bench.LABEL_LENGTH == 48 and b.flops_per_token is None
    times, extra = b.step(1, 2, "")
    assert len(times) == 2 and all(t > 0 for t in times) and extra["final_loss"] > 0


@pytest.fixture(scope="module")
def adapter_run(tiny, tmp_path_factory):
    """A run folder holding an (untrained) LoRA adapter on the tiny Whisper, as run.py saves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    path, processor = tiny
    run = tmp_path_factory.mktemp("run")
    model = get_peft_model(
        WhisperForConditionalGeneration.from_pretrained(path), LoraConfig(r=4, target_modules=["q_proj"])
    )
    model.save_pretrained(run / "adapter")
    processor.save_pretrained(run / "adapter")
    return run


def speech_of_length(seconds: float, path, rate: int = 22050):
    """The bundled clip repeated (with short silences) to ``seconds``, written as WAV at ``rate`` Hz."""
    clip = decode(SMOKE_CV / "clips" / "common_voice_zh-CN_smoke_012.mp3", rate).array
    unit = np.concatenate([clip, np.zeros(rate // 2, np.float32)])
    sf.write(path, np.resize(unit, int(seconds * rate)), rate)
    return path


def test_infer_transcribes_short_and_long_recordings_in_one_process(adapter_run, tmp_path, capsys):
    import infer

    files = [speech_of_length(s, tmp_path / f"speech_{s}s.wav") for s in (29, 31, 185)]
    code = infer.main(["--run", str(adapter_run), "--device", "cpu", "--max-new-tokens", "4", *map(str, files)])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(f) for f in files]
    assert all(len(line.split("\t")) == 2 for line in lines)
    for seconds, f in zip((29, 31, 185), files):
        assert f"{f}: 22050 Hz, {seconds:.1f} s, transcribed in" in err
    assert err.count("model loaded in") == 1


def test_infer_chunks_only_recordings_longer_than_the_window(adapter_run, tmp_path, monkeypatch):
    import infer

    transcriber = infer.Transcriber(adapter_run, "cpu")
    seen = []
    real = transcriber.pipeline
    monkeypatch.setattr(transcriber, "pipeline", lambda audio, **kw: seen.append(kw) or real(audio, **kw))
    for seconds in (29, 31):
        transcriber(decode(speech_of_length(seconds, tmp_path / f"s{seconds}.wav"), 16000), max_new_tokens=2)
    assert "chunk_length_s" not in seen[0]
    assert seen[1]["chunk_length_s"] == 30.0 and seen[1]["stride_length_s"] == 5.0


def test_infer_reports_bad_files_and_still_transcribes_the_others(adapter_run, tmp_path, capsys):
    import infer

    good = SMOKE_CV / "clips" / "common_voice_zh-CN_smoke_012.mp3"
    text_as_flac = tmp_path / "notes.flac"
    text_as_flac.write_text("this is a text file, not a recording\n" * 20)
    m4a = tmp_path / "voice.m4a"
    m4a.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
    missing = tmp_path / "missing.mp3"
    code = infer.main(
        [
            "--run",
            str(adapter_run),
            "--device",
            "cpu",
            "--max-new-tokens",
            "2",
            *map(str, [text_as_flac, good, missing, m4a, good]),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert [line.split("\t")[0] for line in out.strip().splitlines()] == [str(good), str(good)]
    assert "3 of 5 file(s) failed" in err
    assert f"{text_as_flac} is not an audio file libsndfile can read" in err
    assert f"audio file {missing} not found" in err
    assert f"{m4a}: M4A/AAC is not a format libsndfile reads; convert it first, e.g. `ffmpeg -i {m4a}" in err


def test_infer_without_an_adapter_exits_2(tmp_path, capsys):
    import infer

    clip = SMOKE_CV / "clips" / "common_voice_zh-CN_smoke_012.mp3"
    assert infer.main(["--run", str(tmp_path), "--device", "cpu", str(clip)]) == 2
    assert "holds no adapter_config.json" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_audio_decodes_common_formats_to_mono_at_the_requested_rate(tmp_path, fmt):
    rate = 22050
    t = np.arange(rate) / rate
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1).astype(np.float32) * 0.5
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, stereo, rate, format=fmt)
    clip = decode(path, 16000)
    assert clip.array.ndim == 1 and clip.sampling_rate == 16000 and clip.source_rate == rate
    assert clip.duration_s == pytest.approx(1.0, abs=0.06)  # MP3 adds encoder padding
    assert np.abs(clip.array).max() == pytest.approx(0.25, abs=0.03)  # the two channels averaged
    assert decode(path.read_bytes(), None, name=str(path)).sampling_rate == rate  # bytes, native rate


def test_audio_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(LabError, match="empty.wav holds no audio samples"):
        decode(empty)
    with pytest.raises(LabError, match="audio file .*nope.wav not found"):
        decode(tmp_path / "nope.wav")


def test_infer_timestamps_need_a_tokenizer_with_timestamp_tokens(adapter_run, capsys):
    import infer

    clip = SMOKE_CV / "clips" / "common_voice_zh-CN_smoke_012.mp3"
    assert infer.main(["--run", str(adapter_run), "--device", "cpu", "--timestamps", str(clip)]) == 2
    assert "no timestamp tokens" in capsys.readouterr().err


def test_infer_goes_on_when_the_model_fails_on_one_file(adapter_run, monkeypatch, capsys):
    import infer

    real = infer.Transcriber.__call__
    calls = []

    def flaky(self, clip, *args, **kwargs):
        calls.append(clip.duration_s)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, clip, *args, **kwargs)

    monkeypatch.setattr(infer.Transcriber, "__call__", flaky)
    clip = str(SMOKE_CV / "clips" / "common_voice_zh-CN_smoke_012.mp3")
    assert infer.main(["--run", str(adapter_run), "--device", "cpu", "--max-new-tokens", "2", clip, clip]) == 1
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1 and "transcription failed: RuntimeError: CUDA out of memory" in err


def test_expected_data_fingerprint_is_the_bundled_clips():
    from data import data_fingerprint

    expected = load_expected(LAB.expected_path("smoke"))["data"]["fingerprint"]
    assert data_fingerprint(load_profile(LAB, "smoke")[0]["data"], LAB.dir.parents[1]) == expected
    assert not load_expected(LAB.expected_path("full"))["data"]  # a local Common Voice copy: no fixed fingerprint


# --- The README's "your own data" commands, run as written ------------------------------------------
# Each command line is resolved the way `make lab-whisper-lora` resolves it (labkit.host.plan and
# labkit.host.runs, natively, on a host without an accelerator), and the lab's own data step runs on
# what its script would receive; the first command also runs whole, through make (the last test).
# tests/test_labs.py's foreign-data test runs the smoke on the same folder (lab.yaml foreign_data).

FOREIGN_CV = LAB.dir / "data" / "foreign" / "cv-corpus-foreign" / "zh-CN"
PLACEHOLDER = "/path/to/folder"


def readme_section(title: str) -> str:
    text = (LAB.dir / "README.md").read_text(encoding="utf-8")
    return re.split(r"\n#+ ", text.split(f"\n### {title}\n", 1)[1], maxsplit=1)[0]


def script_settings(command: str, tmp_path, monkeypatch) -> tuple[str, list[str]]:
    """``(profile, --set values)`` the lab's script receives for a README command line such as
    ``CV_DIR=/x make lab-whisper-lora`` or ``SET=...`` (then ``make lab-whisper-lora SET=...``): the
    run plan and ``labkit.host.runs.run`` as `make` calls them, natively, without an accelerator;
    the script's command is captured instead of started."""
    from labkit.host import runs
    from labkit.host.plan import resolve
    from labkit.host.probe import Accelerators

    words = shlex.split(command)
    if "make" not in words:
        words = ["make", f"lab-{LAB.name}", *words]
    at = words.index("make")
    for word in words[:at]:  # VAR=value before make: the environment
        monkeypatch.setenv(*word.split("=", 1))
    assert words[at + 1] == f"lab-{LAB.name}", command
    make_vars = dict(word.split("=", 1) for word in words[at + 2 :])
    plan = resolve(LAB, make_vars.get("PROFILE", "auto"), "native", make_vars.get("SET", ""), host=Accelerators())
    started = []
    monkeypatch.setattr(runs, "ensure_env", lambda lab, variant=None, flavor=None: sys.executable)
    monkeypatch.setattr(runs, "stream", lambda cmd, env=None: started.append(cmd) or (0, ""))
    assert runs.run(plan, tmp_path / "outputs") == (0, "")
    args = started[0][2:]
    return args[args.index("--profile") + 1], [args[i + 1] for i, a in enumerate(args) if a == "--set"]


def test_readme_gives_these_own_data_commands():
    """The commands the tests below run; a README that gives others must bring their tests."""
    found = re.findall(r"`([^`]*(?:SET|CV_DIR)=[^`]*)`", readme_section("Your own data"))
    assert found == [
        f"CV_DIR={PLACEHOLDER} make lab-whisper-lora",
        f"SET=data.path={PLACEHOLDER}",
        "SET=data.bad_text=drop",
    ]
    block = re.search(r"```bash\n(.*?)```", readme_section("Transcribe your own recordings"), re.S).group(1)
    assert (
        block.split()
        == (
            ".venvs/whisper-lora/bin/python labs/whisper-lora/infer.py --run outputs/whisper-lora/full/latest "
            "\\ meeting.flac note1.mp3 note2.wav [--timestamps] [--device cuda]"
        ).split()
    )


@pytest.mark.parametrize("command", [f"CV_DIR={PLACEHOLDER} make lab-whisper-lora", f"SET=data.path={PLACEHOLDER}"])
def test_readme_own_folder_commands_train_and_test_on_that_folder(command, tmp_path, monkeypatch):
    import make_foreign_data

    from data import data_fingerprint

    monkeypatch.delenv("CV_DIR", raising=False)
    profile, settings = script_settings(command.replace(PLACEHOLDER, str(FOREIGN_CV)), tmp_path, monkeypatch)
    assert profile == "smoke" and settings == [f"data.path={FOREIGN_CV}"]
    cfg = load_profile(LAB, profile, settings)[0]["data"]
    dsd, dropped = load_splits(cfg, REPO_ROOT)
    written = make_foreign_data.SPLITS
    assert dropped == {} and len(dsd["train"]) == 5 and len(dsd["test"]) == 4
    assert sorted(dsd["test"]["sentence"]) == sorted(s for s, *_ in written["test"])
    assert sorted(dsd["train"]["sentence"]) == sorted(s for s, *_ in written["train"] + written["dev"])
    assert {decode(a, 16000).source_rate for a in dsd["test"]["audio"]} == {16000, 8000}
    bundled = load_expected(LAB.expected_path("smoke"))["data"]["fingerprint"]
    assert data_fingerprint(cfg, REPO_ROOT) not in (bundled, None)


def test_readme_bad_text_command_drops_and_counts_an_empty_transcript(tmp_path, monkeypatch):
    own = tmp_path / "zh-CN"
    shutil.copytree(FOREIGN_CV, own)
    rewrite_sentences(own / "dev.tsv", {1: "  "})
    profile, settings = script_settings(f"CV_DIR={own} make lab-whisper-lora", tmp_path, monkeypatch)
    with pytest.raises(LabError, match=r"dev.tsv: column 'sentence' is empty at line 3\. .*data.bad_text=drop"):
        load_splits(load_profile(LAB, profile, settings)[0]["data"], REPO_ROOT)
    command = f"CV_DIR={own} make lab-whisper-lora SET=data.bad_text=drop"  # the README's two, together
    profile, settings = script_settings(command, tmp_path, monkeypatch)
    assert settings == ["data.bad_text=drop", f"data.path={own}"]
    dsd, dropped = load_splits(load_profile(LAB, profile, settings)[0]["data"], REPO_ROOT)
    assert dropped == {"dev": {"sentence": 1}} and len(dsd["train"]) == 4 and len(dsd["test"]) == 4
    assert "下雨的时候路上车很多。" not in dsd["train"]["sentence"]


def test_readme_infer_command_transcribes_flac_mp3_and_wav(adapter_run, tmp_path):
    """The README's infer.py line as written (script path from the repo root, the run folder and three
    recordings named as there, one longer than Whisper's 30 s window), in a process of its own; with
    the README's `--max-new-tokens` lowered to 8, since the untrained smoke model always writes up to
    the limit (128 by default: minutes on a busy 2-core machine)."""
    clips = sorted((FOREIGN_CV / "clips").glob("*.flac"))
    speech = np.concatenate([decode(c, 16000).array for c in clips])  # 9 clips, 42.6 s
    sf.write(tmp_path / "meeting.flac", speech, 16000)
    sf.write(tmp_path / "note1.mp3", decode(clips[0], 22050).array, 22050, format="MP3")
    sf.write(tmp_path / "note2.wav", decode(clips[6], None).array, 8000)
    files = [tmp_path / n for n in ("meeting.flac", "note1.mp3", "note2.wav")]
    result = subprocess.run(
        [sys.executable, "labs/whisper-lora/infer.py", "--run", str(adapter_run), *map(str, files)]
        + ["--max-new-tokens", "8"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.split("\t")[0] for line in result.stdout.strip().splitlines()] == list(map(str, files))
    for f, rate in zip(files, (16000, 22050, 8000)):
        assert f"{f}: {rate} Hz, {decode(f, None).duration_s:.1f} s, transcribed in" in result.stderr
    assert decode(files[0], None).duration_s > 30 and result.stderr.count("model loaded in") == 1


def test_readme_cv_dir_command_runs_through_make_and_verifies(tmp_path):
    """The README's first own-data command, through make as written (a CPU-only host's PROFILE=auto:
    the smoke profile; natively), on a copy of the foreign clips: the run verifies, with the 6 checks
    tied to the bundled clips SKIPped and the mechanics checks passing."""
    import os

    if not shutil.which("make") or not (REPO_ROOT / ".venv" / "bin" / "invoke").exists():
        pytest.skip("needs make and the tooling virtualenv .venv (`make venv`)")
    own = tmp_path / "zh-CN"
    shutil.copytree(FOREIGN_CV, own)
    command = f"CV_DIR={PLACEHOLDER} make lab-whisper-lora".replace(PLACEHOLDER, str(own))
    env = {k: v for k, v in os.environ.items() if k not in ("PROFILE", "RUNTIME", "SET", "VARIANT", "CV_DIR")}
    env.update(PROFILE="smoke", RUNTIME="native", OUTPUT_ROOT=str(tmp_path / "outputs"))  # smoke on a GPU host too
    done = subprocess.run(
        ["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "=> PASS (6 skipped)" in out and "Traceback" not in out, out[-3000:]
    assert "data: 5 train / 4 test clips, 0.01 h, 8000, 16000 Hz -> 16000 Hz" in out
    assert f"--set data.path={own}" in out  # CV_DIR became the run's data.path
