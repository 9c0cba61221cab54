"""deepspeed-zero's own pieces, in the lab's environment: data checks, config checks (bad JSON,
unknown stage, fp16 with T5), the launcher command lines and their refusals (more processes than
devices, a malformed hostfile, an unreachable host), step-indexed batches, DeepSpeed's memory model."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest
from zero import T5_SIZES, config_path, count_params, estimates, load_ds_config, load_pairs, tokenize_pairs

from labkit.config import get_lab, load_profile
from labkit.errors import LabError
from labkit.lab.launch import LaunchSpec, check_hosts_reachable, check_nproc, command, read_hostfile, shown

from train import batches_for_step

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


def test_the_lab_configs_are_the_courses_with_torch_adam():
    z2 = load_ds_config(config_path(CONFIGS, 2, False), "t5", False)
    z3o = load_ds_config(config_path(CONFIGS, 3, True), "t5", False)
    assert z2["zero_optimization"]["stage"] == 2 and "offload_optimizer" not in z2["zero_optimization"]
    assert z3o["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert z3o["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert z3o["optimizer"]["params"]["torch_adam"] is True and z3o["zero_force_ds_cpu_optimizer"] is False
    assert z2["train_micro_batch_size_per_gpu"] == "auto" and z2["bf16"] == {"enabled": "auto"}


def test_config_that_is_not_json_names_line_and_column(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{\n  "zero_optimization": {"stage": 2,}\n}\n', encoding="utf-8")
    with pytest.raises(LabError, match=r"ds.json line 2 column 36: not valid JSON"):
        load_ds_config(bad, "t5", False)
    with pytest.raises(LabError, match=r"missing.json: No such file"):
        load_ds_config(tmp_path / "missing.json", "t5", False)


def test_unknown_stage_is_refused(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 4}}), encoding="utf-8")
    with pytest.raises(LabError, match="stage is 4; ZeRO has stages 0, 1, 2 and 3"):
        load_ds_config(bad, "t5", False)


def test_fp16_with_t5_is_refused_and_allowed_for_other_models(tmp_path):
    with pytest.raises(LabError, match="fp16 with a T5 model is refused.*overflows.*bf16"):
        load_ds_config(config_path(CONFIGS, 2, False), "t5", True)  # "auto" + fp16=true
    forced = tmp_path / "ds.json"
    forced.write_text(json.dumps({"fp16": {"enabled": True}, "zero_optimization": {"stage": 2}}), encoding="utf-8")
    with pytest.raises(LabError, match="refused"):
        load_ds_config(forced, "t5", False)
    assert load_ds_config(forced, "bart", False)["fp16"]["enabled"] is True


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


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


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


def test_zero3_config_that_cannot_save_a_full_model_is_refused(tmp_path):
    config = json.loads(config_path(CONFIGS, 3, False).read_text())
    config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(LabError, match="saves no full model"):
        load_ds_config(bad, "t5", False)
