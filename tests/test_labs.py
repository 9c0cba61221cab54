"""Every lab end to end: its unit tests, the smoke run and its verification, a broken pipeline that
verification must reject, bad input caught before training, and the container path.

These tests run the labs the way `make lab-<name>` does (a run plan, then labkit.host.runs), in
throwaway output folders.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from labkit.config import REPO_ROOT
from labkit.errors import LabError
from labkit.host import docker, runs
from labkit.host.native import ensure_env
from labkit.host.nvidia import Gpu
from labkit.host.plan import resolve
from labkit.host.probe import Accelerators, probe
from labkit.rundir import newest_completed_run
from labkit.verify import format_table, load_expected, verify_run

from helpers import latest_run, run_lab, run_notebook

SECRET = "hf_thisIsATestTokenThatMustNeverBeWritten"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    root.chmod(0o755)
    return root


def is_plain_native_run(run_dir: Path) -> bool:
    """A completed native run with no overrides (the plain smoke run of a test)."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("status") == "completed" and manifest["runtime"] == "native" and not manifest["overrides"]


def metric_differences(a: Path, b: Path) -> list[tuple[str, object, object]]:
    """``(metric, a's, b's)`` for every metric that differs between two runs' ``metrics.json``, leaving
    out what may differ between identical runs (:data:`labkit.rundir.VOLATILE_METRIC`)."""
    from labkit.rundir import comparable_metrics

    first, second = (comparable_metrics(json.loads(p.read_text())) for p in (a, b))
    return [(k, first.get(k), second.get(k)) for k in sorted(set(first) | set(second)) if first.get(k) != second.get(k)]


def verify_latest(outputs: Path, lab, profile: str = "smoke"):
    run_dir = latest_run(outputs, lab.name, profile)
    assert run_dir is not None, f"no {profile} run of {lab.name} under {outputs}"
    checks = verify_run(run_dir, lab.expected_path(profile))
    print(format_table(checks))
    return run_dir, checks


def test_lab_unit_tests_pass_in_its_environment(lab):
    python = ensure_env(lab)
    result = subprocess.run(
        [str(python), "-m", "pytest", str(lab.dir / "tests"), "-q", "-p", "no:cacheprovider"],
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0


def test_bench_self_test_runs_the_full_path_at_tiny_scale(lab, tmp_path):
    """`invoke bench`'s CPU self-test: the lab's bench.py at tiny scale, every row measured."""
    code, tail = runs.stream(
        [str(ensure_env(lab)), str(lab.dir / "bench.py"), "--arch", "tiny", "--device", "cpu", "--batch-sizes", "2"]
        + ["--steps", "1", "--warmup", "1", "--out", str(tmp_path)]
    )
    assert code == 0, tail
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["lab"] == lab.name and report["rows"] and report["flops"]
    for row in report["rows"]:
        assert row["status"] == "ok" and row["steps"] == 1 and row["step_s"] > 0, row
        assert 0.1 < row["peak_allocated_gib"] < 8 and row["samples_per_s"] == pytest.approx(
            row["batch"] / row["step_s"], rel=0.01
        )
    assert {r["batch"] for r in report["rows"]} == {2}
    assert f"| {report['setting']} |" in (tmp_path / "bench.md").read_text()


def test_smoke_run_of_the_notebook_passes_verification(lab, outputs, monkeypatch):
    """The plain native smoke run is the lab's notebook (labs/<lab>/notebook.ipynb, generated from
    run.py) executed headless cell by cell: a notebook run is a run (run folder, manifest, metrics,
    verification). The script runs natively on the foreign and broken overrides below and in the
    container, whose run must equal this one (test_smoke_run_in_container_as_non_root_passes_verification):
    one run per lab checks both."""
    for name in ("HF_TOKEN", "OPENAI_API_KEY"):  # the chat-API lab's replay server takes any key
        monkeypatch.setenv(name, SECRET)
    run_notebook(lab, outputs)
    run_dir, checks = verify_latest(outputs, lab)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["notebook"]["path"] == f"labs/{lab.name}/notebook.ipynb"
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert not any(c.skipped for c in checks), "the bundled data must match expected/smoke.yaml's data.fingerprint"
    for path in run_dir.parents[1].rglob("*"):  # secrets are passed at run time and never written (caches too)
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"a secret leaked into {path}"


def foreign(lab) -> str:
    """The lab's second, differently made dataset (``lab.yaml`` ``foreign_data``: profile overrides)."""
    overrides = lab.meta.get("foreign_data")
    assert overrides, f"labs/{lab.name}/lab.yaml has no foreign_data: every lab has a second dataset of its own kind"
    return overrides


def test_smoke_on_foreign_data_passes_with_only_the_data_bound_checks_skipped(lab, outputs):
    """A verdict must be true off the bundled path: the smoke run on the lab's second dataset (other
    texts, size and balance, written for the test) completes, its data-bound checks SKIP, none FAIL."""
    root = outputs / "foreign"
    code, _ = run_lab(lab, "smoke", "native", foreign(lab), root)
    assert code == 0
    _, checks = verify_latest(root, lab)
    assert not [c for c in checks if not c.passed], [c for c in checks if not c.passed]
    bound = {
        name
        for name, spec in load_expected(lab.expected_path("smoke"))["metrics"].items()
        if spec.get("depends_on_data")
    }
    skipped = {c.name for c in checks if c.skipped}
    assert bound <= skipped, f"data-bound checks that ran on other data: {bound - skipped}"
    assert len([c for c in checks if not c.skipped]) >= 5, "the mechanics checks still apply"


def test_broken_pipeline_fails_verification(lab, outputs):
    """The lab's broken override (learning rate 0, say) on its second dataset: the run completes and
    verification must fail the checks named in lab.yaml (mechanics checks: they hold on any data)."""
    root = outputs / "foreign"
    code, _ = run_lab(lab, "smoke", "native", f"{lab.broken_override} {foreign(lab)}", root)
    assert code == 0
    run_dir, checks = verify_latest(root, lab)
    failed = {c.name for c in checks if not c.passed}
    assert "manifest status" not in failed
    assert set(lab.broken_fails) <= failed, f"expected {lab.broken_fails} among the failed checks {failed}"
    earlier = sorted(p for p in run_dir.parent.iterdir() if p.name != "latest")
    assert len(earlier) >= 2 and all((p / "manifest.json").exists() for p in earlier)  # nothing overwritten


@pytest.mark.labs("whisper-lora")
def test_smoke_on_your_own_data_skips_only_the_data_dependent_checks(lab, tmp_path):
    """whisper-lora's smoke profile pointed at other clips (CV_DIR / data.path) verifies: counts of
    the bundled clips are skipped (SKIP), the mechanics checks still apply."""
    import csv

    own = tmp_path / "zh-CN"
    shutil.copytree(lab.dir / "data" / "smoke" / "cv-corpus-smoke" / "zh-CN", own)
    rows = list(csv.reader((own / "test.tsv").open(encoding="utf-8"), delimiter="\t"))
    with (own / "test.tsv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter="\t").writerows(rows[:-1])  # 2 test clips instead of 3
    code, _ = run_lab(lab, "smoke", "native", [f"data.path={own}"], tmp_path / "outputs")
    assert code == 0
    _, checks = verify_latest(tmp_path / "outputs", lab)
    skipped = {c.name for c in checks if c.skipped}
    assert skipped == {
        "data.train_examples",
        "data.eval_examples",
        "data.source_sampling_rates",
        "train.steps",
        "train.loss_after",
        "eval.transcripts",
    }
    assert all(c.passed for c in checks)
    assert {"train.loss_drop_ratio", "reload.max_abs_logit_diff", "file adapter/adapter_config.json"} <= {
        c.name for c in checks if not c.skipped
    }


def test_full_profile_without_accelerator_fails_clearly(lab, outputs):
    if probe().kind:
        pytest.skip("this host has an accelerator")
    with pytest.raises(LabError, match="PROFILE=full needs a CUDA GPU or an Ascend NPU.*Use PROFILE=smoke"):
        run_lab(lab, "full", "native", [], outputs)
    assert latest_run(outputs, lab.name, "full") is None  # failed before writing anything


def test_unknown_override_and_unwritable_outputs_fail_before_training(lab, tmp_path):
    with pytest.raises(LabError, match="learnin_rate.*Valid keys"):
        run_lab(lab, "smoke", "native", ["learnin_rate=0"], tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(LabError, match="not-a-dir/.* is not writable"):
        run_lab(lab, "smoke", "native", [], blocker)


needs_engine = pytest.mark.skipif(bool(docker.docker_error()), reason=f"Docker not usable: {docker.docker_error()}")


@needs_engine
def test_smoke_run_in_container_as_non_root_passes_verification(lab, outputs):
    docker.build_lab_image(lab)
    user = subprocess.run(
        [*docker.docker_cli(), "image", "inspect", "--format", "{{.Config.User}}", docker.image_tag(lab.name)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert user and user.split(":")[0] not in ("", "0", "root")
    code, _ = run_lab(lab, "smoke", "docker", [], outputs)
    assert code == 0
    run_dir, checks = verify_latest(outputs, lab)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    manifest = (run_dir / "manifest.json").read_text()
    assert '"runtime": "docker"' in manifest and '"image_id": "sha256:' in manifest
    # Same seed, same numbers: the container's script run equals the native notebook run
    # (test_smoke_run_of_the_notebook_passes_verification)
    # in every metric but timings and cache counters, and in every weights file (the tiny model built here
    # included), byte for byte.
    native = [d for d in sorted(run_dir.parent.iterdir()) if not d.is_symlink() and is_plain_native_run(d)]
    if not native:  # this test alone (-k container): make the native run it is compared with
        assert run_lab(lab, "smoke", "native", [], outputs)[0] == 0
        native = [d for d in sorted(run_dir.parent.iterdir()) if not d.is_symlink() and is_plain_native_run(d)]
    first, second = (json.loads((d / "manifest.json").read_text()) for d in (native[0], run_dir))
    assert second["weights_sha256"] and first["weights_sha256"] == second["weights_sha256"]
    assert first["reproducibility"]["deterministic"] and second["reproducibility"]["deterministic"]
    differ = metric_differences(native[0] / "metrics.json", run_dir / "metrics.json")
    assert not differ, f"native and container smoke runs differ: {differ}"


@needs_engine
def test_each_variant_image_runs_its_smoke_profile(lab, outputs):
    """A lab variant (the quantization lab's course libraries) builds its own image and verifies."""
    variants = lab.variants
    if not variants:
        pytest.skip(f"{lab.name} has no variants")
    if all(v.get("image") == "ascend" for v in variants.values()):
        pytest.skip(f"{lab.name}'s only variant is on the Ascend image: tests/test_ascend.py runs it")
    for name, variant in variants.items():
        if variant.get("image") == "ascend":
            continue  # the npu variant's image: tests/test_ascend.py (arm64, under QEMU on x86_64)
        profile = f"{name}-smoke"
        docker.build_lab_image(lab, name)
        code, _ = run_lab(lab, profile, "docker", [], outputs)
        assert code == 0, f"{name} variant: smoke run failed"
        run_dir, checks = verify_latest(outputs, lab, profile)
        assert all(c.passed for c in checks), [c for c in checks if not c.passed]
        assert '"image_id": "sha256:' in (run_dir / "manifest.json").read_text()


@needs_engine
def test_gpu_run_on_engine_without_nvidia_runtime_is_explained(lab, outputs, capsys):
    """A GPU host whose Docker lacks the NVIDIA Container Toolkit: the run asks for --gpus and the
    engine refuses; the error names the toolkit. (The host's GPU is stood in for: on a host without
    one the plan refuses the full profile before Docker, test_full_profile_without_accelerator_fails_clearly.)"""
    if probe().kind:
        pytest.skip("this host has a GPU")
    gpu_host = Accelerators(gpus=(Gpu("NVIDIA T4 (stand-in)", 15.0, "580.95.05"),))
    code, tail = runs.run(resolve(lab, "full", "docker", host=gpu_host), outputs)
    assert code != 0
    if "could not select device driver" not in tail:
        pytest.skip("this engine accepted --gpus (an NVIDIA runtime is configured)")
    assert "NVIDIA Container Toolkit" in capsys.readouterr().err


def test_latest_runs_under_outputs_verify(lab, request):
    """`invoke test --lab X` also checks the user's own latest runs (a full GPU run included)."""
    if not request.config.getoption("--lab"):
        pytest.skip("only with --lab")
    found = [(p, newest_completed_run(runs.output_root(), lab.name, p)[0]) for p in lab.profiles]
    found = [(p, d) for p, d in found if d]
    if not found:
        pytest.skip(f"no runs of {lab.name} under {runs.output_root()}")
    for profile, run_dir in found:
        checks = verify_run(run_dir, lab.expected_path(profile))
        print(f"{profile}: {run_dir}\n{format_table(checks)}")
        assert all(c.passed for c in checks), f"{profile} run {run_dir} fails verification"


@pytest.mark.labs("deepspeed-zero")
def test_launch_that_waits_for_a_missing_node_stops_at_its_timeout(lab, tmp_path):
    """torchrun with nnodes=2 and no second node: a clear error after launch.timeout_s, no hang."""
    import time

    start = time.monotonic()
    code, tail = run_lab(
        lab,
        "smoke",
        "native",
        ["launcher=torchrun", "nnodes=2", "timeout_s=20", "zero_stage=2", "nproc_per_node=1"],
        tmp_path,
    )
    assert code == 2 and time.monotonic() - start < 120
    assert "torchrun --nproc_per_node 1 --nnodes 2 --node_rank 0" in tail
    assert "ran past 20 s and was stopped" in tail or "RendezvousTimeoutError" in tail


#: Run in node1's container: SIGKILL its rank process(es) (train.py, not the torchrun agent); prints their pids.
KILL_RANK = """\
import os, signal
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
    except OSError:
        continue
    if any(a.endswith(b"train.py") for a in argv) and b"torch.distributed.run" not in argv:
        os.kill(int(pid), signal.SIGKILL)
        print(pid)
"""


@needs_engine
@pytest.mark.labs("deepspeed-zero")
@pytest.mark.skipif(not shutil.which("docker-compose"), reason="no docker-compose binary (make venv installs it)")
def test_two_containers_train_as_two_nodes(lab, tmp_path):
    """labs/deepspeed-zero/compose.multinode.yaml: node0 and node1 on a private bridge network, one
    job across them (torchrun c10d rendezvous, gloo), ZeRO-2 and ZeRO-3, resumed from node-local checkpoints.
    Mid-way through the ZeRO-3 job node1's rank is killed (SIGKILL): torchrun (max_restarts=1) restarts the
    ranks of both nodes, which resume from the newest checkpoint both completed (checkpoint_every=3) and end
    with the uninterrupted run's losses (expected/smoke.yaml's exact values)."""
    import time

    docker.build_lab_image(lab)
    tmp_path.chmod(0o777)  # the containers run as uid 1000
    compose = ["docker-compose", "-f", str(lab.dir / "compose.multinode.yaml"), "-p", f"dz{tmp_path.name[-8:].lower()}"]
    env = {**os.environ, "OUTPUT_ROOT": str(tmp_path), "IMAGE": docker.image_tag(lab.name)}
    env.update(MAX_RESTARTS="1", CHECKPOINT_EVERY="3")
    killed, log = "", tmp_path / "compose.log"
    try:
        with log.open("w") as out:
            up = subprocess.Popen([*compose, "up", "--abort-on-container-failure"], env=env, stdout=out, stderr=out)
            deadline = time.monotonic() + 1500
            while up.poll() is None and time.monotonic() < deadline:
                progress = list(tmp_path.glob("deepspeed-zero/smoke/*/zero3-np2/progress.json"))
                step = json.loads(progress[0].read_text() or "{}").get("step", 0) if progress else 0
                if not killed and step >= 7:  # node0's rank 0 finished step 7: the step-6 checkpoint is complete
                    node1 = subprocess.run([*compose, "ps", "-q", "node1"], env=env, capture_output=True, text=True)
                    killed = subprocess.run(
                        [*docker.docker_cli(), "exec", node1.stdout.strip(), "python", "-c", KILL_RANK],
                        capture_output=True,
                        text=True,
                    ).stdout.strip()
                time.sleep(0.2)
            up.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        subprocess.run([*compose, "down", "--volumes"], env=env, capture_output=True)
    assert up.returncode == 0, log.read_text()[-5000:]
    assert killed, "node1's rank was not killed mid-training"
    run_dir, checks = verify_latest(tmp_path, lab)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert not any(
        c.skipped and c.name.startswith(("reload", "resume", "stages.max_abs_weight_diff_np2", "jobs.zero3-np2"))
        for c in checks
    )
    (restart,) = json.loads((run_dir / "metrics.json").read_text())["restarts"]["events"]
    assert restart["job"] == "zero3-np2" and restart["attempt"] == 1 and restart["resumed_from_step"] in (6, 9)
    # (0 when the kill, late on a loaded machine, lands right after the step-9 checkpoint)
    assert restart["steps_lost"] == restart["last_step_done"] - restart["resumed_from_step"] >= 0
    print(f"node1's rank (pid {killed}) killed; the restart: {restart}")
    ranks = [json.loads((run_dir / "zero3-np2" / f"rank{r}.json").read_text()) for r in (0,)]
    node1 = latest_run(tmp_path / "node1", lab.name, "smoke")
    ranks.append(json.loads((node1 / "zero3-np2" / "rank1.json").read_text()))
    node1_checks = verify_run(node1, lab.expected_path("smoke"))  # node 1 verifies too: rank 0's parts skipped
    assert all(c.passed for c in node1_checks), [c for c in node1_checks if not c.passed]
    assert [r["host"] for r in ranks] == ["node0", "node1"] and {r["world_size"] for r in ranks} == {2}
