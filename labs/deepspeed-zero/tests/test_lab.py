"""deepspeed-zero's own pieces, in the lab's environment: data checks, config checks (bad JSON,
unknown stage, fp16 with the T5 family, values DeepSpeed and Transformers read differently, filled
as the Trainer fills them for each world size), the launcher command lines and their refusals (more
processes than devices, a malformed hostfile, an unreachable host), what a failed launch reports,
step-indexed batches, DeepSpeed's memory model, and an elastic restart after a killed rank."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from labkit.config import get_lab, load_profile
from labkit.errors import LabError
from labkit.lab.launch import (
    LaunchSpec,
    check_hosts_reachable,
    check_nproc,
    command,
    failure_lines,
    launch,
    read_hostfile,
    shown,
)

from train import batches_for_step
from zero import (
    T5_SIZES,
    config_path,
    count_params,
    estimates,
    load_pairs,
    prepare_ds_config,
    read_ds_config,
    tokenize_pairs,
    training_arguments,
)

LAB = get_lab("deepspeed-zero")
CONFIGS = LAB.dir / "configs"


def smoke_cfg():
    return load_profile(LAB, "smoke")[0]


def test_bundled_pairs_load_and_tokenize_like_run_translation(tmp_path):
    cfg = smoke_cfg()
    pairs, dropped = load_pairs(cfg["data"], LAB.dir.parents[1])
    assert (len(pairs["train"]), len(pairs["validation"]), dropped) == (168, 24, {})
    assert not set(pairs["train"]["en"]) & set(pairs["validation"]["en"])

    from labkit.lab.tiny import build_tiny_t5

    texts = [t for split in pairs.values() for c in ("en", "ro") for t in split[c]]
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(build_tiny_t5(tmp_path / "t5", texts))
    rows, cuts = tokenize_pairs(pairs, tokenizer, {**cfg["data"], "max_source_length": 8})
    assert cuts["train"] == {"sources_cut": 168, "targets_cut": 0}  # the prefix alone is longer than 8 tokens
    first = rows[0]
    assert len(first["input_ids"]) == 8 and first["input_ids"][-1] == tokenizer.eos_token_id
    assert first["labels"][-1] == tokenizer.eos_token_id and tokenizer.pad_token_id == 0


def test_tiny_t5_tokenizer_is_the_same_on_every_build(tmp_path):
    from labkit.lab.tiny import build_tiny_t5

    texts = ["Băiatul citește o carte astăzi.", "The boy reads a book today."] * 20
    a, b = (build_tiny_t5(tmp_path / n, texts, vocab_size=60) for n in "ab")
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_empty_target_text_names_file_line_and_column(tmp_path):
    cfg = smoke_cfg()["data"]
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"en": "One.", "ro": "Unu."}\n{"en": "Two.", "ro": ""}\n', encoding="utf-8")
    cfg = {**cfg, "files": {"train": str(bad), "validation": str(bad)}}
    with pytest.raises(LabError, match=r"train.jsonl: column 'ro' is empty at line 2.*data.bad_text=drop"):
        load_pairs(cfg, tmp_path)
    pairs, dropped = load_pairs({**cfg, "bad_text": "drop"}, tmp_path)
    assert len(pairs["train"]) == 1 and dropped["train"] == {"ro": 1}


@pytest.fixture(scope="module")
def args(tmp_path_factory):
    """The smoke profile's Seq2SeqTrainingArguments (CPU): what "auto" values are filled from."""
    return training_arguments(smoke_cfg()["training"], "cpu", tmp_path_factory.mktemp("trainer"))


def prepare(raw: dict, args, model_type: str = "t5", stage: int | None = None, world: int = 1) -> dict:
    stage = raw.get("zero_optimization", {}).get("stage", 0) if stage is None else stage
    return prepare_ds_config(
        raw, Path("ds.json"), stage=stage, model_type=model_type, hidden_size=32, args=args, world_size=world,
        max_steps=24,
    )  # fmt: skip


def lab_config(stage: int, offload: bool = False, **changes) -> dict:
    """configs/ds_zero<stage>[_offload].json with ``changes`` ({"fp16.enabled": 1, ...}) applied."""
    config = read_ds_config(config_path(CONFIGS, stage, offload))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def test_the_lab_configs_are_the_courses_with_torch_adam_filled_as_the_trainer_fills_them(args):
    z2 = read_ds_config(config_path(CONFIGS, 2, False))
    z3o = read_ds_config(config_path(CONFIGS, 3, True))
    assert z2["zero_optimization"]["stage"] == 2 and "offload_optimizer" not in z2["zero_optimization"]
    assert z3o["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert z3o["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert z3o["optimizer"]["params"]["torch_adam"] is True and z3o["zero_force_ds_cpu_optimizer"] is False
    assert z2["train_micro_batch_size_per_gpu"] == "auto" and z2["bf16"] == {"enabled": "auto"}
    one, two = prepare(z2, args), prepare(z2, args, world=2)
    assert (one["train_batch_size"], two["train_batch_size"], two["train_micro_batch_size_per_gpu"]) == (8, 16, 8)
    assert one["optimizer"]["params"]["lr"] == 1e-2 and one["scheduler"]["params"]["warmup_num_steps"] == 3
    assert one["fp16"]["enabled"] is False and one["bf16"]["enabled"] is False
    assert prepare(z3o, args)["zero_optimization"]["stage3_prefetch_bucket_size"] == int(0.9 * 32 * 32)
    assert "auto" not in json.dumps(prepare(z3o, args, world=2))


def test_config_that_is_not_json_names_line_and_column(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{\n  "zero_optimization": {"stage": 2,}\n}\n', encoding="utf-8")
    with pytest.raises(LabError, match=r"ds.json line 2 column 36: not valid JSON"):
        read_ds_config(bad)
    with pytest.raises(LabError, match=r"missing.json: No such file"):
        read_ds_config(tmp_path / "missing.json")
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(LabError, match=r"ds.json: a JSON object .* is expected, not list"):
        read_ds_config(bad)


def test_unknown_stage_another_stage_and_unknown_zero_keys_are_refused(args):
    with pytest.raises(LabError, match=r"ds.json: zero_optimization.stage is 4; ZeRO has stages 0, 1, 2 and 3"):
        prepare({"zero_optimization": {"stage": 4}}, args, stage=4)
    with pytest.raises(LabError, match=r"a ZeRO-2 config \(zero_optimization.stage\), not ZeRO-3"):
        prepare(lab_config(2), args, stage=3)
    typo = lab_config(2)
    typo["zero_optimization"]["overlap_com"] = True  # DeepSpeed's model forbids unknown ZeRO keys
    with pytest.raises(LabError, match=r"zero_optimization.overlap_com: Extra inputs are not permitted"):
        prepare(typo, args)
    with pytest.raises(LabError, match=r"zero_optimization.stage is \"3\": write a whole number without quotes"):
        prepare(lab_config(3, **{"zero_optimization.stage": "3"}), args, stage=3)


def test_fp16_with_the_t5_family_is_refused_as_deepspeed_reads_the_value(args):
    """Issue 21 item 11: the refusal read JSON by truthiness (`enabled is True`): 1 and "true" trained
    in fp16 or died in a rank; mT5 and umT5 (same overflow) were never refused."""
    from types import SimpleNamespace

    with pytest.raises(LabError, match="fp16 with a t5 model .* is refused.*overflows.*bf16"):
        prepare(lab_config(2), SimpleNamespace(fp16=True))  # "auto" + fp16=true
    for written in (True, 1, "true"):  # DeepSpeed reads all three as true
        with pytest.raises(LabError, match="fp16 with a t5 model .* is refused"):
            prepare(lab_config(2, **{"fp16.enabled": written}), args)
    for family in ("mt5", "umt5", "longt5"):
        with pytest.raises(LabError, match=f"fp16 with a {family} model \\(T5 family\\) is refused"):
            prepare(lab_config(3, **{"fp16.enabled": True}), args, model_type=family)
    # another model: the value's spelling is the problem (Transformers would read "false" as true)
    with pytest.raises(LabError, match=r'fp16.enabled is "true": write true or false \(a JSON boolean'):
        prepare(lab_config(2, **{"fp16.enabled": "true"}), args, model_type="bart")
    with pytest.raises(LabError, match=r'bf16.enabled is "false": write true or false'):
        prepare(lab_config(2, **{"bf16.enabled": "false"}), args, model_type="bart")
    with pytest.raises(LabError, match=r"fp16.enabled: Input should be a valid boolean.*\(got 2\)"):
        prepare(lab_config(2, **{"fp16.enabled": 2}), args, model_type="bart")


def test_zero3_config_that_cannot_save_a_full_model_is_refused_however_it_is_written(args):
    for written in (False, "false", 0):  # "false" passed the old truthiness check and failed after training
        config = lab_config(3, **{"zero_optimization.stage3_gather_16bit_weights_on_model_save": written})
        with pytest.raises(LabError, match="saves no full model"):
            prepare(config, args)
    del (config := lab_config(3))["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    with pytest.raises(LabError, match="saves no full model"):
        prepare(config, args)


def test_values_that_contradict_the_training_settings_or_the_world_size_are_refused(args):
    fixed = lab_config(2, train_batch_size=16)  # 8 per process x 2 processes
    assert prepare(fixed, args, world=2)["train_batch_size"] == 16
    with pytest.raises(LabError, match=r"ds train_batch_size=16 vs hf train_batch_size \(calculated\)=8.*\"auto\""):
        prepare(fixed, args, world=1)
    with pytest.raises(LabError, match=r"ds optimizer.params.lr=0.001 vs hf learning_rate=0.01"):
        prepare(lab_config(3, **{"optimizer.params.lr": 1e-3}), args)
    inconsistent = lab_config(2, train_batch_size=16, train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=1)
    with pytest.raises(LabError, match=r"ds.json: .*per_device_train_batch_size=8"):
        prepare(inconsistent, args, world=2)


def test_batches_are_a_function_of_the_step_and_cover_the_data_once_per_epoch():
    order = list(range(100, 116))
    step0 = [batches_for_step(0, r, 2, 2, 2, order) for r in range(2)]
    assert step0 == [[[100, 101], [104, 105]], [[102, 103], [106, 107]]]
    epoch = [i for s in range(2) for r in range(2) for b in batches_for_step(s, r, 2, 2, 2, order) for i in b]
    assert sorted(epoch) == order
    # step 5 reads rows 40-47 of the endless order: positions 8-15 again
    assert batches_for_step(5, 1, 2, 2, 2, order) == [[110, 111], [114, 115]]


def test_launcher_command_lines():
    spec = LaunchSpec.from_config(smoke_cfg()["launch"], 2)
    ds = shown(command(spec, Path("train.py"), ["job.json"], job=3))
    assert ds == "deepspeed --master_port 29503 --num_gpus 2 train.py job.json"
    multi = LaunchSpec.from_config(
        {**smoke_cfg()["launch"], "launcher": "torchrun", "nnodes": 2, "node_rank": 1, "master_addr": "node0"}, 1
    )
    tr = shown(command(multi, Path("train.py"), ["job.json"]))
    assert tr == (
        "torchrun --nproc_per_node 1 --nnodes 2 --node_rank 1 --rdzv_backend c10d --rdzv_endpoint node0:29500 "
        "--rdzv_conf join_timeout=300 train.py job.json"
    )
    assert multi.world_size == 2
    hosts = LaunchSpec.from_config({**smoke_cfg()["launch"], "hostfile": "hosts", "include": "n1:0,1"}, 8)
    assert "--hostfile hosts --include n1:0,1 train.py" in shown(command(hosts, Path("train.py"), []))


def test_bad_launch_settings_are_refused():
    launch = smoke_cfg()["launch"]
    with pytest.raises(LabError, match="launcher 'mpirun' is not one of deepspeed, torchrun"):
        LaunchSpec.from_config({**launch, "launcher": "mpirun"}, 1)
    with pytest.raises(LabError, match="node_rank 2 must be in 0..1"):
        LaunchSpec.from_config({**launch, "launcher": "torchrun", "nnodes": 2, "node_rank": 2}, 1)
    with pytest.raises(LabError, match="nnodes > 1 with the deepspeed launcher needs launch.hostfile"):
        LaunchSpec.from_config({**launch, "nnodes": 2}, 1)


def test_more_processes_than_devices_is_refused(monkeypatch):
    from labkit.lab.launch import devices_here

    have = devices_here("cpu")
    check_nproc(have, "cpu")
    with pytest.raises(LabError, match=rf"nproc_per_node={have + 1} but this node has {have} CPU core"):
        check_nproc(have + 1, "cpu")
    import labkit.lab.launch

    monkeypatch.setattr(labkit.lab.launch, "devices_here", lambda device: 2)
    with pytest.raises(LabError, match="nproc_per_node=3 but this node has 2 CUDA GPU"):
        check_nproc(3, "cuda")


def test_hostfile_is_parsed_by_deepspeed_and_bad_lines_are_named(tmp_path):
    good = tmp_path / "hostfile"
    good.write_text("# two nodes\nnode0 slots=8\nnode1 slots=8\n", encoding="utf-8")
    assert read_hostfile(good) == {"node0": 8, "node1": 8}
    bad = tmp_path / "bad"
    bad.write_text("node0 slots=8\nnode1 gpus=8\n", encoding="utf-8")
    with pytest.raises(LabError, match=r"bad line 2: .*bad entry: node1 gpus=8"):
        read_hostfile(bad)
    with pytest.raises(LabError, match="missing: No such file"):
        read_hostfile(tmp_path / "missing")


def test_unreachable_host_fails_within_the_timeout():
    with socket.socket() as closed:  # a port nothing listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(LabError, match="'127.0.0.2' .* does not answer on port .*Connection refused"):
        check_hosts_reachable(["127.0.0.2"], port=port, timeout_s=2)
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never greets: a hung host
        silent.bind(("127.0.0.2", 0))
        silent.listen()
        start = time.monotonic()
        with pytest.raises(LabError, match=r"'127.0.0.2' .* does not answer on port \d+ \(timed out, waited 1 s\)"):
            check_hosts_reachable(["127.0.0.2"], port=silent.getsockname()[1], timeout_s=1)
        assert time.monotonic() - start < 3
    with pytest.raises(LabError, match="'no-such-host.invalid'"):
        check_hosts_reachable(["no-such-host.invalid"], timeout_s=1)


def test_memory_model_counts_t5_large_and_3b_as_deepspeed_does():
    assert count_params(T5_SIZES["t5-large"])[0] == 737_668_096  # google-t5/t5-large: 738M
    assert count_params(T5_SIZES["t5-3b"])[0] == 2_851_598_336  # google-t5/t5-3b: 2.85B
    rows = {(r["model"], r["stage"], r["offload"], r["gpus"]): r for r in estimates(gpus=(1, 8))}
    # ZeRO-2 without offload, DeepSpeed's formula: 2 N bytes (16-bit weights) + 18 N / GPUs (16-bit gradients,
    # fp32 master weights and Adam's two moments, partitioned): 20 N on one GPU
    assert rows[("t5-large", 2, False, 1)]["gpu_gib"] == pytest.approx(20 * 737_668_096 / 2**30, rel=1e-6)
    assert rows[("t5-3b", 3, False, 8)]["gpu_gib"] < rows[("t5-3b", 3, False, 1)]["gpu_gib"] / 6
    assert rows[("t5-3b", 3, True, 1)]["gpu_gib"] < 1 < rows[("t5-3b", 3, True, 1)]["cpu_gib"]


def test_visible_gpus_reach_the_deepspeed_launcher_as_include(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    spec = LaunchSpec.from_config(smoke_cfg()["launch"], 2)
    assert "--include localhost:4,5 train.py" in shown(command(spec, Path("train.py"), []))


def test_hostfile_launch_needs_pdsh_and_counts_its_slots(tmp_path, monkeypatch):
    hosts = tmp_path / "hostfile"
    hosts.write_text("node0 slots=4\nnode1 slots=4\n", encoding="utf-8")
    spec = LaunchSpec.from_config({**smoke_cfg()["launch"], "hostfile": str(hosts), "nnodes": 2}, 1)
    assert spec.world_size == 8
    monkeypatch.setattr("shutil.which", lambda name: None)
    from labkit.lab.launch import launch

    with pytest.raises(LabError, match="has no pdsh"):
        launch(spec, Path("train.py"), [], tmp_path / "launch.log")
    assert not (tmp_path / "launch.log").exists()


def test_hostfile_with_a_byte_order_mark_no_slots_or_an_odd_host_name_is_refused(tmp_path):
    """Issue 21 item 11: DeepSpeed's parser takes all three (the BOM and the zero-width space become part of
    the host name its launcher then tries to reach; slots=0 a host with no process)."""
    hosts = tmp_path / "hostfile"
    hosts.write_text("\ufeffnode0 slots=8\nnode1 slots=8\n", encoding="utf-8")
    with pytest.raises(LabError, match=r"hostfile .* starts with a byte-order mark .*save it as plain UTF-8"):
        read_hostfile(hosts)
    hosts.write_text("node0 slots=8\nnode1\tslots=0\n", encoding="utf-8")
    with pytest.raises(LabError, match=r"hostfile line 2: node1 has slots=0: every host needs slots=1 or more"):
        read_hostfile(hosts)
    hosts.write_text("# comment\nnode0 slots=8\nnode\u200b1 slots=8\n", encoding="utf-8")
    with pytest.raises(LabError, match=r"hostfile line 3: host 'node\\u200b1' has the character .*U\+200B"):
        read_hostfile(hosts)
    hosts.write_text("10.0.0.1 slots=4\nfe80::1 slots=4\nnode-2.cluster slots=1\n", encoding="utf-8")
    assert read_hostfile(hosts) == {"10.0.0.1": 4, "fe80::1": 4, "node-2.cluster": 1}


RANK_LOG = """\
+ torchrun --nproc_per_node 2 train.py job.json
[2026-12-06 16:40:01,181] [INFO] [launch.py:152:main] WORLD INFO DICT: {'localhost': [0, 1]}
Traceback (most recent call last):
  File "train.py", line 300, in <module>
    main(job_paths)
  File "train.py", line 120, in main
    raise ValueError(message)
ValueError: Please correct the following DeepSpeed config values that mismatch TrainingArguments values:
- ds fp16.enabled=true vs hf fp16|fp16_full_eval=False
The easiest method is to set these DeepSpeed config values to 'auto'.
[rank1]: Traceback (most recent call last):
[rank1]:   File "train.py", line 300, in <module>
[rank1]:     main(job_paths)
[rank1]: ValueError: Please correct the following DeepSpeed config values that mismatch TrainingArguments values:
[rank1]: - ds fp16.enabled=true vs hf fp16|fp16_full_eval=False
[rank1]: The easiest method is to set these DeepSpeed config values to 'auto'.
E1206 16:40:05.100000 77 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 1) local_rank: 0
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 900, in main
    run(args)
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train.py FAILED
"""


def test_a_failed_launch_shows_the_exception_each_rank_ended_with():
    assert failure_lines(RANK_LOG) == [
        "ValueError: Please correct the following DeepSpeed config values that mismatch TrainingArguments values:",
        "- ds fp16.enabled=true vs hf fp16|fp16_full_eval=False",
        "The easiest method is to set these DeepSpeed config values to 'auto'.",
    ]
    killed = "+ torchrun ...\n  exitcode  : -9 (pid: 4242)\n  traceback : Signal 9 (SIGKILL) received by PID 4242\n"
    assert failure_lines(killed) == [
        "exitcode  : -9 (pid: 4242)",
        "traceback : Signal 9 (SIGKILL) received by PID 4242",
    ]
    assert failure_lines("one\ntwo\n\nthree\n", limit=2) == ["two", "three"]
    assert failure_lines("error: rank 1: ranks hold different data\nmore\n") == [
        "error: rank 1: ranks hold different data"
    ]


def test_a_rank_that_raises_puts_its_error_lines_in_the_runs_message(tmp_path):
    """A real torchrun launch whose rank fails (a script without torch: the launcher's start is the cost)."""
    script = tmp_path / "rank.py"
    script.write_text(
        "import os\n"
        'if os.environ["RANK"] == "0":\n'
        '    raise ValueError("mismatch:\\n- ds fp16.enabled=true vs hf fp16=False")\n'
    )
    spec = LaunchSpec.from_config({**smoke_cfg()["launch"], "launcher": "torchrun", "timeout_s": 120}, 1)
    with pytest.raises(LabError) as failed:
        launch(spec, script, [], tmp_path / "launch.log")
    message = str(failed.value)
    assert "exited with 1; log: " in message and str(tmp_path / "launch.log") in message
    assert message.splitlines()[1:] == ["ValueError: mismatch:", "- ds fp16.enabled=true vs hf fp16=False"]


def test_restarts_need_torchrun():
    launch_cfg = smoke_cfg()["launch"]
    with pytest.raises(LabError, match="max_restarts=2 needs launch.launcher=torchrun"):
        LaunchSpec.from_config({**launch_cfg, "max_restarts": 2}, 2)
    spec = LaunchSpec.from_config({**launch_cfg, "launcher": "torchrun", "max_restarts": 2}, 2)
    assert shown(command(spec, Path("train.py"), ["a.json", "b.json"], port=1234)) == (
        "torchrun --nproc_per_node 2 --max-restarts 2 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:1234 "
        "train.py a.json b.json"
    )


def smoke_inputs(folder: Path) -> tuple[str, Path]:
    """The smoke profile's tiny T5 and tokenized pairs, made as run.py makes them: (model, tokenized.jsonl)."""
    from transformers import AutoTokenizer

    from labkit.lab.tiny import build_tiny_t5

    cfg = smoke_cfg()
    pairs, _ = load_pairs(cfg["data"], LAB.dir.parents[1])
    texts = [t for split in pairs.values() for c in split.column_names for t in split[c]]
    model = str(build_tiny_t5(folder / "tiny-t5", texts, seed=cfg["seed"], **cfg["model"]["tiny"]))
    rows, _ = tokenize_pairs(pairs, AutoTokenizer.from_pretrained(model), cfg["data"])
    tokenized = folder / "tokenized.jsonl"
    tokenized.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return model, tokenized


def test_a_killed_rank_is_restarted_by_torchrun_and_resumes_to_the_uninterrupted_losses(tmp_path, args):
    """Issue 21 item 14: one torchrun launch (2 ranks, --max-restarts 1) runs the same ZeRO-3 job twice:
    uninterrupted, then with a checkpoint every 3 steps; rank 1 is killed (SIGKILL) in the second job
    after step 7. torchrun restarts both ranks, the finished job is skipped, the killed one resumes
    from step 6 (its newest checkpoint both ranks completed) and ends with the uninterrupted losses,
    bit for bit."""
    import signal
    import threading

    import psutil

    model, tokenized = smoke_inputs(tmp_path)
    cfg = smoke_cfg()
    training = {**cfg["training"], "max_steps": 12, "seed": cfg["seed"]}
    ds_config = prepare(lab_config(3), args, world=2)
    paths = {}
    for name, every in (("uninterrupted", 0), ("killed", 3)):
        (tmp_path / name).mkdir()
        job = dict(out_dir=str(tmp_path / name), device="cpu", model=model, revision=None, tokenized=str(tokenized))
        job.update(ds_config=ds_config, training=training, eval_batch_size=8, save_checkpoint_at=None)
        job.update(checkpoint_every=every, resume_from=None, checkpoint_tag="step6")
        paths[name] = tmp_path / name / "job.json"
        paths[name].write_text(json.dumps(job), encoding="utf-8")
    spec = LaunchSpec.from_config(
        {**cfg["launch"], "launcher": "torchrun", "max_restarts": 1, "timeout_s": 600}, 2
    )  # fmt: skip
    failure = []

    def run():
        try:
            launch(spec, LAB.dir / "train.py", [str(paths["uninterrupted"]), str(paths["killed"])], tmp_path / "log")
        except LabError as exc:
            failure.append(exc)

    launcher = threading.Thread(target=run)
    launcher.start()
    progress, killed = tmp_path / "killed" / "progress.json", None
    deadline = time.monotonic() + 600
    while killed is None and launcher.is_alive() and time.monotonic() < deadline:
        try:
            step = json.loads(progress.read_text())["step"]
        except (OSError, ValueError):
            step = 0
        if step >= 7:  # the step-6 checkpoint is complete on both ranks
            for proc in psutil.process_iter(["cmdline"]):
                cmdline = proc.info["cmdline"] or []
                if str(paths["killed"]) in cmdline and "torch.distributed.run" not in cmdline:
                    if proc.environ().get("RANK") == "1":
                        killed = proc.pid
                        os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    launcher.join(timeout=600)
    assert killed and not failure, (killed, failure, (tmp_path / "log").read_text()[-3000:])
    log = (tmp_path / "log").read_text()
    assert "uninterrupted: finished before the restart, skipped" in log
    reference = json.loads((tmp_path / "uninterrupted" / "result.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert reference["restarts"] == [] and len(reference["losses"]) == 12
    assert resumed["losses"] == reference["losses"]  # every step's loss, bit for bit
    assert resumed["held_out_loss"] == reference["held_out_loss"]
    (restart,) = resumed["restarts"]
    assert restart["attempt"] == 1 and restart["resumed_from_step"] == 6
    assert restart["steps_lost"] == restart["last_step_done"] - 6 and 1 <= restart["steps_lost"] <= 3
    assert 0 < restart["resume_s"] < 300
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoint").iterdir() if p.is_dir()) == ["step6", "step9"]
    print(f"restart: {restart}")


def test_launched_processes_share_a_bytecode_cache_outside_the_repository(tmp_path, monkeypatch):
    from labkit.lab.launch import bytecode_cache

    env = bytecode_cache({"PYTHONDONTWRITEBYTECODE": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")})
    cache = str(tmp_path / "cache" / "llm-labs" / "pycache")
    assert env == {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPYCACHEPREFIX": cache}
    assert bytecode_cache({"PYTHONPYCACHEPREFIX": "/mine", "PYTHONDONTWRITEBYTECODE": "1"}) == {
        "PYTHONPYCACHEPREFIX": "/mine",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache folder would go: the temporary folder instead
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert bytecode_cache({"XDG_CACHE_HOME": str(blocked)})["PYTHONPYCACHEPREFIX"].startswith(str(tmp_path / "tmp"))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
