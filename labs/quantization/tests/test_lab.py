"""Unit tests of the quantization lab: calibration checks, weight files, device pre-flight,
perplexity, the comparison table, and the full profile's missing-GPU error."""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from labkit.errors import LabError
from labkit.lab.tiny import build_tiny_opt

from measure import footprint_bytes, perplexity
from methods import check_on_one_device, load_model, weights_format
from report import write_tables
from texts import calibration_windows, load_texts, token_ids

LAB_DIR = Path(__file__).resolve().parents[1]
TEXTS = [" = Aldmoor = ", " Aldmoor is a market town on the River Avon .", " The town grew on the wool trade ."] * 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_opt(tmp_path_factory.mktemp("tiny"), TEXTS, hidden_size=32, num_hidden_layers=1, ffn_dim=64)
    return path, AutoTokenizer.from_pretrained(path)


def test_calibration_windows_have_the_asked_shape(tiny):
    _, tok = tiny
    windows = calibration_windows(TEXTS, tok, seq_len=16, num_samples=5, seed=0, label="wikitext")
    assert len(windows) == 5 and all(len(w) == 16 for w in windows)
    assert windows == calibration_windows(TEXTS, tok, 16, 5, 0, "wikitext")  # seeded


@pytest.mark.parametrize("texts", [[], [" tiny"]])
def test_too_little_calibration_text_fails_naming_the_source(tiny, texts):
    _, tok = tiny
    with pytest.raises(LabError, match=r"custom \(file my\.txt\) has \d+ tokens.*\(seq_len=64\)"):
        calibration_windows(texts, tok, seq_len=64, num_samples=4, seed=0, label="custom (file my.txt)")


def test_missing_text_file_is_named(tmp_path):
    with pytest.raises(LabError, match="nope.txt not found"):
        load_texts({"file": "nope.txt", "dataset": None}, tmp_path)


def test_blank_lines_are_dropped(tmp_path):
    (tmp_path / "cal.txt").write_text("first\n\n   \nsecond\n", encoding="utf-8")
    assert load_texts({"file": "cal.txt", "dataset": None}, tmp_path) == ["first", "second"]


def test_reload_works_from_safetensors_and_from_bin(tiny, tmp_path):
    """Older checkpoints and libraries write pytorch_model.bin, newer ones model.safetensors."""
    from safetensors.torch import load_file

    src, _ = tiny
    model = load_model(src, "cpu", "float32")
    model.save_pretrained(tmp_path / "safetensors")
    assert weights_format(tmp_path / "safetensors") == "safetensors"
    legacy = tmp_path / "bin"
    model.config.save_pretrained(legacy)
    torch.save(load_file(tmp_path / "safetensors" / "model.safetensors"), legacy / "pytorch_model.bin")
    assert weights_format(legacy) == "bin"
    for folder, safe in ((tmp_path / "safetensors", True), (legacy, False)):
        again = load_model(folder, "cpu", "float32", use_safetensors=safe)
        assert torch.equal(again.lm_head.weight, model.lm_head.weight)


def test_a_folder_without_weights_is_reported(tmp_path):
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(LabError, match=r"holds no model weights.*it has: config.json"):
        weights_format(tmp_path)


class _Offloaded:
    hf_device_map = {"model.decoder.embed_tokens": 0, "model.decoder.layers.0": 0, "model.decoder.layers.1": "cpu"}


def test_gptq_on_a_partly_offloaded_model_fails_before_evaluation():
    with pytest.raises(LabError, match=r"GPTQ kernels need every module on the GPU.*model.decoder.layers.1"):
        check_on_one_device(_Offloaded(), "cuda", "gptq")
    check_on_one_device(_Offloaded(), "cuda", "bnb")  # bitsandbytes offloads by design
    check_on_one_device(_Offloaded(), "cpu", "gptq")  # CPU runs use the torch kernels


def test_perplexity_of_one_window_is_exp_of_the_loss(tiny):
    src, tok = tiny
    model = load_model(src, "cpu", "float32")
    ids = token_ids(TEXTS[:6], tok)[:40]
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert perplexity(model, ids, max_length=64, stride=64) == pytest.approx(math.exp(loss), rel=1e-5)
    # Sliding windows that overlap score every token once, with more context: no worse than disjoint ones.
    assert perplexity(model, ids, max_length=16, stride=8) <= perplexity(model, ids, max_length=16, stride=16) * 1.05
    assert footprint_bytes(model) == sum(p.numel() * 4 for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )


def test_table_keeps_skipped_steps_with_blank_measurements(tmp_path):
    steps = {
        "fp16": {"method": "none", "status": "ok", "footprint_bytes": 2**21, "perplexity": 10.0},
        "gptq_wikitext": {"method": "gptq", "status": "skipped: needs CUDA"},
    }
    rows = write_tables(steps, tmp_path)
    assert rows[0]["footprint_mib"] == 2.0 and rows[1]["footprint_mib"] is None
    md = (tmp_path / "comparison.md").read_text(encoding="utf-8").splitlines()
    assert md[3].startswith("| gptq_wikitext | gptq | skipped: needs CUDA |")
    assert (tmp_path / "comparison.csv").read_text(encoding="utf-8").count("\n") == 3


def test_full_profile_without_cuda_stops_with_a_clear_error(tmp_path, capsys):
    import run

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    assert run.main("quantization", run.run, ["--profile", "full", "--output-root", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not any(tmp_path.rglob("metrics.json"))


def test_a_misspelt_step_fails_before_any_work():
    from labkit.config import get_lab, load_profile

    import run

    config, _ = load_profile(get_lab("quantization"), "smoke", ["steps.awq.calibration=pilevall"])
    with pytest.raises(LabError, match=r"steps.awq.calibration='pilevall' is not a data source: wikitext, custom"):
        run.check_steps(config, "maintained")
    config["steps"]["awq"] = {"method": "awk"}
    with pytest.raises(LabError, match=r"steps.awq.method='awk' is not one of none, gptq, awq, bnb"):
        run.check_steps(config, "maintained")
    for profile in ("full", "course-full", "course-smoke"):  # every shipped profile passes
        variant = "course" if "course" in profile else "maintained"
        run.check_steps(load_profile(get_lab("quantization"), profile)[0], variant)


def test_variant_set_by_hand_and_long_autoawq_windows_are_refused():
    from labkit.config import get_lab, load_profile

    import run

    lab = get_lab("quantization")
    with pytest.raises(LabError, match="choose the variant with VARIANT=course"):
        run.check_steps(load_profile(lab, "smoke", ["variant=course"])[0], "maintained")
    with pytest.raises(LabError, match="AutoAWQ 0.2.5 drops calibration samples over 512 tokens"):
        run.check_steps(load_profile(lab, "course-full", ["awq.seq_len=2048"])[0], "course")


def test_short_custom_calibration_stops_the_run_before_training(tmp_path, capsys):
    import run

    short = tmp_path / "short.txt"
    short.write_text("three short words\n", encoding="utf-8")
    argv = ["--profile", "smoke", "--output-root", str(tmp_path / "out"), "--set", f"data.custom.file={short}"]
    assert run.main("quantization", run.run, argv) == 2
    assert "custom (file " in capsys.readouterr().err
    run_dir = next((tmp_path / "out" / "quantization" / "smoke").glob("2*"))
    assert not (run_dir / "pretrain_log.jsonl").exists() and not (run_dir / "models").exists()


def test_pcre_module_matches_what_gptqmodel_uses():
    """Natively `pcre` is native/pypcre-stdlib (re-backed); in the image it is the real pypcre. Both
    must handle GPTQModel 7.6's own patterns and flags the same way."""
    import pcre

    shard = pcre.compile(rf"{pcre.escape('model')}-\d{{5}}-of-\d{{5}}\.safetensors")
    assert shard.fullmatch("model-00001-of-00002.safetensors")
    assert not shard.fullmatch("modelX00001-of-00002.safetensors")
    size = pcre.compile(r"^(\d+)\s*([KMGT]?B)$", flags=pcre.Flag.CASELESS)
    assert size.match("5gb").groups() == ("5", "gb")
    assert pcre.compile(r"^#define X (\d+)$", flags=pcre.Flag.MULTILINE).findall("a\n#define X 3\n") == ["3"]
    assert pcre.split(r"[;\s,]+", "a; b,c") == ["a", "b", "c"]
    assert pcre.search("abc", "xABC", pcre.Flag.CASELESS) and not pcre.search("abc", "xABC")
    assert isinstance(pcre.compile(r"x"), pcre.Pattern)


def test_pcre_stdlib_refuses_flags_re_cannot_honour():
    import pcre

    if not pcre.__version__.endswith("+stdlib"):
        pytest.skip("the real pypcre (container image)")
    with pytest.raises(NotImplementedError, match="no Python re equivalent"):
        pcre.compile("x", flags=0x80000000)  # PCRE2_ANCHORED


def test_bench_loads_the_profile_configs_and_nf4_is_smallest():
    import bench

    b = bench.make("tiny", "cpu")
    assert b.variants == ("fp16", "int8", "nf4") and b.tokens_per_sample == bench.NEW_TOKENS
    sizes = {v: b.step(1, 1, v)[1]["footprint_mib"] for v in b.variants}
    assert sizes["nf4"] < sizes["int8"] < sizes["fp16"]


@pytest.mark.parametrize("profile", ["smoke", "full", "course-smoke", "course-full"])
def test_expected_data_fingerprint_is_the_profiles_data(profile):
    from labkit.config import get_lab, load_profile
    from labkit.verify import load_expected

    from texts import sources_fingerprint

    lab = get_lab("quantization")
    cfg = load_profile(lab, profile)[0]["data"]
    assert (
        sources_fingerprint(cfg, lab.dir.parents[1]) == load_expected(lab.expected_path(profile))["data"]["fingerprint"]
    )


# --- The README's "your own data" commands, run as written ------------------------------------------
# Each `make lab-quantization SET=...` line is resolved the way make resolves it (labkit.host.plan and
# labkit.host.runs, natively, on a host without an accelerator), and the lab's text step (load, check,
# draw the calibration windows) runs on what its script would receive. Relative paths are read from the
# repository root: a temporary folder stands in for it. The file command also runs whole, through
# make (the last test); tests/test_labs.py's foreign-data test runs the smoke on other texts for all
# four sources (lab.yaml foreign_data).

FOREIGN = LAB_DIR / "data" / "foreign"


def readme_own_data_block() -> list[str]:
    readme = (LAB_DIR / "README.md").read_text(encoding="utf-8")
    section = readme.split("Your own calibration data for `gptq_custom`:", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.strip().splitlines()]


def script_settings(command: str, tmp_path, monkeypatch) -> tuple[str, list[str]]:
    """``(profile, --set values)`` the lab's script receives for ``make lab-quantization SET=...``: the
    run plan and ``labkit.host.runs.run`` as `make` calls them; the script is captured, not started."""
    from labkit.config import get_lab
    from labkit.host import runs
    from labkit.host.plan import resolve
    from labkit.host.probe import Accelerators

    words = shlex.split(command)
    assert words[:2] == ["make", "lab-quantization"], command
    make_vars = dict(word.split("=", 1) for word in words[2:])
    lab = get_lab("quantization")
    plan = resolve(lab, make_vars.get("PROFILE", "auto"), "native", make_vars.get("SET", ""), host=Accelerators())
    started = []
    monkeypatch.setattr(runs, "ensure_env", lambda lab, variant=None, flavor=None: sys.executable)
    monkeypatch.setattr(runs, "stream", lambda cmd, env=None: started.append(cmd) or (0, ""))
    assert runs.run(plan, tmp_path / "run-outputs") == (0, "")
    args = started[0][2:]
    return args[args.index("--profile") + 1], [args[i + 1] for i, a in enumerate(args) if a == "--set"]


def test_readme_gives_these_own_data_commands():
    """The commands the tests below run; a README that gives others must bring their tests."""
    assert readme_own_data_block() == [
        "cp my_calibration.txt outputs/",
        'make lab-quantization SET="data.custom.file=outputs/my_calibration.txt"',
        'make lab-quantization SET="data.custom.file=null data.custom.dataset=allenai/c4 '
        'data.custom.name=realnewslike data.custom.split=validation data.custom.max_texts=2000"',
    ]


def test_readme_own_file_commands_calibrate_gptq_custom_on_that_file(tiny, tmp_path, monkeypatch):
    from labkit.config import REPO_ROOT, get_lab, load_profile
    from labkit.verify import load_expected

    from texts import describe, sources_fingerprint

    copy, make = readme_own_data_block()[:2]
    (tmp_path / "outputs").mkdir()
    shutil.copy(FOREIGN / "weather_calibration.txt", tmp_path / "my_calibration.txt")
    subprocess.run(shlex.split(copy), cwd=tmp_path, check=True)  # as written, in the stand-in repo root
    profile, settings = script_settings(make, tmp_path, monkeypatch)
    assert profile == "smoke" and settings == ["data.custom.file=outputs/my_calibration.txt"]
    cfg = load_profile(get_lab("quantization"), profile, settings)[0]
    texts = load_texts(cfg["data"]["custom"], tmp_path)
    assert len(texts) == 90 and all(" backing " in t for t in texts)  # the 90 shipping forecasts
    _, tok = tiny
    windows = calibration_windows(texts, tok, cfg["gptq"]["seq_len"], cfg["gptq"]["num_samples"], cfg["seed"], "x")
    assert len(windows) == 16 and {len(w) for w in windows} == {128}
    assert all("backing" in tok.decode(w) for w in windows)
    assert describe(cfg["data"]["custom"]) == "file outputs/my_calibration.txt"
    bundled = load_expected(get_lab("quantization").expected_path("smoke"))["data"]["fingerprint"]
    assert sources_fingerprint(load_profile(get_lab("quantization"), "smoke")[0]["data"], REPO_ROOT) == bundled
    own = {**cfg["data"], "custom": {**cfg["data"]["custom"], "file": str(tmp_path / "outputs/my_calibration.txt")}}
    assert sources_fingerprint(own, REPO_ROOT) != bundled  # only the custom text differs from the bundled set


def test_readme_hub_dataset_command_loads_the_first_texts_of_that_split(tiny, tmp_path, monkeypatch):
    """The Hub is not reachable from the tests: ``load_dataset`` is replaced by a stand-in that records
    what it was asked for and returns 2,500 documents; the rest of the step is the lab's."""
    from datasets import Dataset

    from labkit.config import get_lab, load_profile

    import texts as texts_module

    make = readme_own_data_block()[2]
    profile, settings = script_settings(make, tmp_path, monkeypatch)
    assert settings[0] == "data.custom.file=null" and len(settings) == 5
    cfg = load_profile(get_lab("quantization"), profile, settings)[0]
    asked = []
    docs = [f"Document {i} : the river rose {i % 7} feet after the storm ." for i in range(2500)]
    monkeypatch.setattr(
        texts_module,
        "load_dataset",
        lambda *a, **kw: asked.append((a, kw)) or Dataset.from_dict({"text": docs, "url": ["u"] * len(docs)}),
    )
    found = load_texts(cfg["data"]["custom"], tmp_path)
    assert asked == [(("allenai/c4", "realnewslike"), {"split": "validation", "revision": None})]
    assert found == docs[:2000]
    windows = calibration_windows(found, tiny[1], cfg["gptq"]["seq_len"], cfg["gptq"]["num_samples"], 42, "c4")
    assert len(windows) == 16 and {len(w) for w in windows} == {128}


# --- A readable console: what the libraries print goes to run.log -----------------------------------


def test_library_output_goes_to_the_run_log_and_not_the_console(tmp_path, capsys, monkeypatch):
    import methods

    monkeypatch.setattr(methods, "quiet_gptqmodel_progress", lambda: True)  # the next test's subject
    output_to = methods.output_to

    with open(tmp_path / "run.log", "a", encoding="utf-8", buffering=1) as log:
        print("[quantization] step gptq_wikitext (gptq) ...")
        with output_to(log):
            print("INFO  ENV: Auto setting CUDA_DEVICE_ORDER=PCI_BUS_ID for correctness.")
            print("Quantizing model.decoder.layers blocks :  25%|##  | 1/4", file=sys.stderr)
        print("[quantization] gptq_wikitext (gptq): 0.67 MiB")
    out, err = capsys.readouterr()
    assert out == "[quantization] step gptq_wikitext (gptq) ...\n[quantization] gptq_wikitext (gptq): 0.67 MiB\n"
    assert err == ""
    logged = (tmp_path / "run.log").read_text(encoding="utf-8")
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in logged and "1/4" in logged and "[quantization]" not in logged


def test_gptqmodel_progress_bars_and_spinners_print_nothing_once_quieted(monkeypatch, capsys):
    """GPTQModel's live progress (its JIT-compile spinner redraws once a second) is a no-op after
    methods.quiet_gptqmodel_progress; before, in a lab run (not under pytest), GPTQModel draws."""
    gptqmodel_logger = pytest.importorskip("gptqmodel.utils.logger")
    from methods import quiet_gptqmodel_progress

    # GPTQModel's check as it answers in a lab run (it is quiet on its own only under pytest).
    monkeypatch.setattr(gptqmodel_logger, "_suppress_live_renderables", lambda: False)
    log = gptqmodel_logger.setup_logger()
    live = log.pb(range(3))
    assert not isinstance(live, gptqmodel_logger._SilentProgress)  # a real, drawing progress bar
    live.close()
    capsys.readouterr()
    assert quiet_gptqmodel_progress() is True
    assert gptqmodel_logger.live_renderables_suppressed() is True
    bar = log.pb(range(3)).manual()
    assert isinstance(bar, gptqmodel_logger._SilentProgress)
    bar.title("Compiling extension: pack_block_cpu...")
    for _ in bar:
        bar.draw(force=True)
    spinner = log.spinner(title="Model loading...", interval=0.1)
    assert isinstance(spinner, gptqmodel_logger._SilentProgress)
    spinner.close()
    out, err = capsys.readouterr()
    assert (out, err) == ("", "")


def test_readme_own_file_command_runs_through_make_and_verifies(tmp_path):
    """The README's custom-calibration command through make (PROFILE=smoke, natively), the file a copy
    of the foreign shipping forecasts: every step runs, the run verifies, the checks tied to the
    bundled texts SKIPped."""
    from labkit.config import REPO_ROOT

    if not shutil.which("make") or not (REPO_ROOT / ".venv" / "bin" / "invoke").exists():
        pytest.skip("needs make and the tooling virtualenv .venv (`make venv`)")
    shutil.copy(FOREIGN / "weather_calibration.txt", tmp_path / "my_calibration.txt")
    command = readme_own_data_block()[1].replace("outputs/my_calibration.txt", str(tmp_path / "my_calibration.txt"))
    env = {k: v for k, v in os.environ.items() if k not in ("PROFILE", "RUNTIME", "SET", "VARIANT")}
    env.update(PROFILE="smoke", RUNTIME="native", OUTPUT_ROOT=str(tmp_path / "outputs"))
    done = subprocess.run(
        ["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "=> PASS (7 skipped)" in out and "Traceback" not in out, out[-3000:]
    assert "[quantization] gptq_custom (gptq): 0.67 MiB (2.62x smaller)" in out
