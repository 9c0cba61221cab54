"""Course chapter 15 lab: DeepSpeed ZeRO-2 / ZeRO-3 training of T5 for translation ("DeepSpeed 实战").

The course fine-tunes T5 (t5-large under ZeRO-2, t5-3b under ZeRO-3 with CPU offload) on WMT16
English -> Romanian with Transformers' ``run_translation.py --deepspeed ds_config_zero{2,3}.json``,
started by ``deepspeed --num_gpus=1``, and shows the Slurm / multi-node launch. This lab runs the
same configs with the real launchers and checks what ZeRO promises: the stages train the same model
(ZeRO partitions state, it does not change the maths), a ZeRO-3 save gathers full weights that
plain Transformers loads, and a resumed run continues the same loss curve.

    python labs/deepspeed-zero/run.py --profile smoke [--set zero_stage=3 --set nproc_per_node=1]
    python labs/deepspeed-zero/run.py --profile full                # t5-large on the GPUs here

Steps: 1. data; 2. model (and the fp16 refusal); 3. DeepSpeed configs, checked; 4. one launch per
ZeRO stage x process count (``train.py`` on every rank, ``labkit.lab.launch``); 5. resume from a ZeRO
checkpoint in a new launch; 6. reload without DeepSpeed, compare stages, DeepSpeed's memory model.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this lab's modules
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # labkit, when run as a script
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import torch

from labkit.errors import LabError
from labkit.lab.data import hub_or_files_fingerprint
from labkit.lab.launch import LaunchSpec, check_nproc, launch
from labkit.lab.runner import RunContext, main
from labkit.lab.tiny import build_tiny_t5

from zero import (
    T5_FAMILY,
    T5_FP16,
    config_path,
    estimates,
    load_pairs,
    prepare_ds_config,
    read_ds_config,
    tokenize_pairs,
    training_arguments,
)

LAB_DIR = Path(__file__).resolve().parent
ONE_NODE_ONLY = "runs on the rank-0 node (this is node {rank} of a multi-node run)"


def run(ctx: RunContext) -> dict:
    cfg = ctx.config
    launch_cfg = cfg["launch"]
    on_rank0_node = launch_cfg["node_rank"] == 0

    # 1. Data: English -> Romanian pairs, text checked, tokenized as run_translation.py does.
    pairs, dropped = load_pairs(cfg["data"], ctx.repo_root)
    data = {
        "train_examples": len(pairs["train"]),
        "eval_examples": len(pairs["validation"]),
        "dropped_rows": dropped,
        "fingerprint": fingerprint(cfg["data"], ctx.repo_root),
    }
    if not len(pairs["validation"]):
        raise LabError("no validation pairs left (data.eval_samples, or the validation file): the lab needs some")
    if cfg["resume_check"] and cfg["training"]["max_steps"] < 2:
        raise LabError("resume_check needs max_steps >= 2 (a checkpoint half-way, then a resumed launch)")

    # 2. Model: T5 from the Hub (full) or a tiny T5 of the same architecture built here (smoke).
    training = cfg["training"]
    model = cfg["model"]["name_or_path"]
    if cfg["model"]["build_tiny"]:
        texts = [text for split in pairs.values() for column in split.column_names for text in split[column]]
        model = str(build_tiny_t5(ctx.run_dir / "tiny-t5", texts, seed=cfg["seed"], **cfg["model"]["tiny"]))
    from transformers import AutoConfig, AutoTokenizer

    revision = cfg["model"]["revision"]
    model_config = AutoConfig.from_pretrained(model, revision=revision)
    model_type = model_config.model_type
    tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
    rows, cuts = tokenize_pairs(pairs, tokenizer, cfg["data"])
    data["lengths"] = cuts
    tokenized = ctx.run_dir / "tokenized.jsonl"
    tokenized.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    # 3. DeepSpeed configs: the lab's (configs/ds_zero<stage>[_offload].json) or yours, read by DeepSpeed's
    #    own config models, checked, and filled as the Trainer fills them for each launch's world size,
    #    before any process starts.
    stages = cfg["zero_stage"]
    if cfg["ds_config"] and len(stages) != 1:
        raise LabError(
            f"ds_config={cfg['ds_config']} is one config: set zero_stage to its stage (e.g. SET=zero_stage=3)"
        )
    if cfg["checkpoint_every"] < 0:
        raise LabError(f"checkpoint_every={cfg['checkpoint_every']}: give 0 (none) or a number of steps")
    counts = process_counts(cfg)
    specs = {nproc: LaunchSpec.from_config(launch_cfg, nproc) for nproc in counts}
    for nproc in [] if launch_cfg["hostfile"] else counts:  # with a hostfile its slots decide
        check_nproc(nproc, ctx.device)
    if training["bf16"] and ctx.device == "cuda" and torch.cuda.get_device_capability()[0] < 8:
        raise LabError(
            f"{torch.cuda.get_device_name(0)} has no bf16 (compute capability below 8.0, e.g. the course's T4): "
            "SET=bf16=false trains in fp32 (T5 in fp16 overflows, so fp16 is no way out)"
        )
    if training["fp16"] and model_type in T5_FAMILY:  # before Transformers judges fp16 on this device
        raise LabError(f"fp16=true with a {model_type} model (T5 family) is refused. {T5_FP16}")
    args = training_arguments(training, ctx.device, ctx.run_dir / "trainer")
    configs = {}  # (stage, world size) -> the filled config its job runs
    for stage in stages:
        path = Path(cfg["ds_config"]) if cfg["ds_config"] else config_path(LAB_DIR / "configs", stage, cfg["offload"])
        path = path if path.is_absolute() else ctx.repo_root / path
        raw = read_ds_config(path)
        for spec in specs.values():
            filled = prepare_ds_config(
                raw,
                path,
                stage=stage,
                model_type=model_type,
                hidden_size=model_config.hidden_size,
                args=args,
                world_size=spec.world_size,
                max_steps=training["max_steps"],
            )
            # Nodes share no filesystem: each keeps its own ranks' checkpoint files.
            if launch_cfg["nnodes"] > 1 or launch_cfg["hostfile"]:
                filled.setdefault("checkpoint", {})["use_node_local_storage"] = True
            configs[stage, spec.world_size] = filled
    if launch_cfg["max_restarts"] and not cfg["checkpoint_every"]:
        print(
            "note: max_restarts without checkpoint_every: a restarted launch trains its unfinished job from its "
            "first step (SET=checkpoint_every=N saves every N steps)",
            flush=True,
        )

    # 4. One launch per process count; its ranks run one job per ZeRO stage, one after the other (each
    #    from a fresh engine, model and seed: what a launch of its own trains). Every rank runs train.py.
    jobs, commands = {}, []
    save_at = training["max_steps"] // 2 if cfg["resume_check"] else None
    for index, nproc in enumerate(counts):
        spec, last = specs[nproc], index == len(counts) - 1
        names = [f"zero{stage}-np{spec.world_size}" for stage in stages]
        saves = [last and i == len(stages) - 1 and save_at for i in range(len(stages))]  # the run's last job
        files = [
            job_file(ctx, name, model, revision, tokenized, configs[stage, spec.world_size], save)
            for name, stage, save in zip(names, stages, saves, strict=True)
        ]
        log = ctx.run_dir / f"launch-np{spec.world_size}.log"
        commands.append(portable(launch(spec, LAB_DIR / "train.py", [str(f) for f in files], log, index), ctx))
        for name in names:
            jobs[name] = read_job(ctx.run_dir / name, on_rank0_node)
            print(summary_line(name, jobs[name]), flush=True)

    # 5. Resume: a new launch loads the last job's ZeRO checkpoint (saved half-way) and trains on.
    resume = {}
    if cfg["resume_check"]:
        spec, stage = specs[counts[-1]], stages[-1]
        first = f"zero{stage}-np{spec.world_size}"
        checkpoint = ctx.run_dir / first / "checkpoint"
        job = job_file(
            ctx, f"{first}-resumed", model, revision, tokenized, configs[stage, spec.world_size], None, checkpoint
        )
        log = ctx.run_dir / f"launch-np{spec.world_size}-resumed.log"
        commands.append(portable(launch(spec, LAB_DIR / "train.py", [str(job)], log, len(counts)), ctx))
        if on_rank0_node:
            resumed = read_job(job.parent, True)
            tail = jobs[first]["result"]["losses"][training["max_steps"] // 2 :]
            resume = {
                "job": first,
                "from_step": resumed["result"]["first_step"],
                "steps": len(resumed["result"]["losses"]),
                "max_abs_loss_diff": max(abs(a - b) for a, b in zip(tail, resumed["result"]["losses"], strict=True)),
            }

    metrics = {"data": data, "model_type": model_type, "launch": {"commands": commands, **launch_cfg}}
    metrics["jobs"] = {name: job_metrics(job) for name, job in jobs.items()}
    metrics["restarts"] = {
        "max_restarts": launch_cfg["max_restarts"],
        "checkpoint_every": cfg["checkpoint_every"],
        "count": sum(len(j["result"]["restarts"]) for j in jobs.values() if "result" in j),
        "events": [{"job": n, **r} for n, j in jobs.items() if "result" in j for r in j["result"]["restarts"]],
    }
    if not on_rank0_node:  # metrics, models and plots are rank 0's; this node holds its ranks' files
        why = ONE_NODE_ONLY.format(rank=launch_cfg["node_rank"])
        prefixes = ["reload.", "stages.", "resume.", "jobs.", "train.", "train_log.jsonl", "loss_curve.png"]
        worlds = {specs[n].world_size for n in counts}
        prefixes += [f"zero{stage}-np{world}/" for stage in stages for world in sorted(worlds)]
        not_run = dict.fromkeys(prefixes, why)
        for name in (f"zero{stage}-np{world}" for stage in (2, 3) for world in (1, 2)):
            not_run.setdefault(f"{name}/", f"no launch {name} in this run (zero_stage, nproc_per_node, nnodes)")
        return {**metrics, "not_run": not_run}

    saved_checkpoint = f"zero{stages[-1]}-np{specs[counts[-1]].world_size}"
    metrics["not_run"] = left_out(jobs, stages, saved_checkpoint if cfg["resume_check"] else None)

    # 6. Reload each saved model in plain Transformers (no DeepSpeed): its logits must be the trained
    #    model's; the stages must have trained the same weights; DeepSpeed's memory model beside ours.
    dtype = torch.bfloat16 if training["bf16"] else torch.float32
    reloads = [reload_diff(ctx.run_dir / name, dtype) for name in jobs]
    metrics["reload"] = {
        "max_abs_logit_diff": max(r[0] for r in reloads),
        "argmax_agreement": min(r[1] for r in reloads),
    }
    metrics["stages"] = compare_stages(ctx.run_dir, jobs, stages)
    metrics["resume"] = resume
    first = next(iter(jobs.values()))["result"]["losses"]
    metrics["train"] = {"steps": len(first), "loss_first": first[0], "loss_last": first[-1]}
    metrics["train"]["loss_drop_ratio"] = min(
        1 - j["result"]["losses"][-1] / j["result"]["losses"][0] for j in jobs.values()
    )
    metrics["estimates"] = estimates()
    print(memory_table(metrics), flush=True)
    curves = {name: (job["result"]["first_step"], job["result"]["losses"]) for name, job in jobs.items()}
    if resume:
        resumed = read_job(ctx.run_dir / f"{resume['job']}-resumed", True)["result"]
        curves[f"{resume['job']}-resumed"] = (resumed["first_step"], resumed["losses"])
    plot_curves(curves, ctx.run_dir)
    return metrics


def process_counts(cfg: dict) -> list[int]:
    """Processes per node of each launch: ``nproc_per_node``, and 1 first when ``also_single_process``."""
    n = int(cfg["nproc_per_node"])
    if n < 1:
        raise LabError(f"nproc_per_node={n}: give 1 or more processes per node")
    return sorted({1, n}) if cfg["also_single_process"] else [n]


def plot_curves(curves: dict[str, tuple[int, list[float]]], run_dir: Path) -> None:
    """``train_log.jsonl`` (job, step, loss) and ``loss_curve.png``: one line per launch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{"job": n, "step": first + i + 1, "loss": v} for n, (first, ls) in curves.items() for i, v in enumerate(ls)]
    (run_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, (first, losses) in curves.items():
        style = dict(linestyle="none", marker="x") if name.endswith("resumed") else dict(marker=".")
        ax.plot(range(first + 1, first + len(losses) + 1), losses, label=name, **style)
    ax.set(xlabel="optimizer step", ylabel="cross-entropy loss", title="T5 under DeepSpeed ZeRO: each launch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss_curve.png")
    plt.close(fig)


def portable(command: str, ctx) -> str:
    """A launch's command for ``metrics.json``: the repository and the run folder as relative paths
    (``<run>``), and a one-node launch's port (a free one, taken at launch) as ``<free port>``, so two
    runs of the same profile (native or in the container) record the same commands."""
    command = command.replace(str(ctx.run_dir), "<run>").replace(f"{ctx.repo_root}/", "")
    if ctx.config["launch"]["nnodes"] == 1 and not ctx.config["launch"]["hostfile"]:
        command = re.sub(r"--master_port \d+", "--master_port <free port>", command)
    return command


def job_file(ctx, name, model, revision, tokenized, ds_config, save_at, resume_from=None) -> Path:
    """Write ``<run>/<name>/job.json`` (everything ``train.py`` needs for one configuration) and the
    DeepSpeed config it runs, filled (``<run>/<name>/ds_config.json``)."""
    out = ctx.run_dir / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "ds_config.json").write_text(json.dumps(ds_config, indent=2) + "\n", encoding="utf-8")
    job = {
        "out_dir": str(out),
        "device": ctx.device,
        "model": model,
        "revision": revision,
        "tokenized": str(tokenized),
        "ds_config": ds_config,
        "training": {**ctx.config["training"], "seed": ctx.config["seed"]},
        "deterministic": ctx.config["deterministic"],
        "eval_batch_size": ctx.config["eval_batch_size"],
        "save_checkpoint_at": save_at or None,
        "checkpoint_every": ctx.config["checkpoint_every"],
        "resume_from": str(resume_from) if resume_from else None,
        "checkpoint_tag": f"step{ctx.config['training']['max_steps'] // 2}",
    }
    path = out / "job.json"
    path.write_text(json.dumps(job, indent=2) + "\n", encoding="utf-8")
    return path


def read_job(folder: Path, has_rank0: bool) -> dict:
    """A launch's outputs: ``result.json`` (rank 0's node) and every ``rank<N>.json`` written here."""
    ranks = sorted(folder.glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    job = {"ranks": [json.loads(p.read_text(encoding="utf-8")) for p in ranks]}
    if has_rank0:
        job["result"] = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    return job


def job_metrics(job: dict) -> dict:
    """Per launch: world size, global batch, losses, median step time, peak memory per rank (MiB)."""
    out = {
        "peak_memory_mib_per_rank": [round(r["peak_memory_bytes"] / 2**20, 1) for r in job["ranks"]],
        "peak_memory_kind": job["ranks"][0]["peak_memory_kind"] if job["ranks"] else None,
        "median_step_s": sorted(job["ranks"][0]["step_s"])[len(job["ranks"][0]["step_s"]) // 2]
        if job["ranks"]
        else None,
    }
    if "result" in job:
        r = job["result"]
        out.update(
            world_size=r["world_size"],
            zero_stage=r["zero_stage"],
            global_batch=r["global_batch"],
            loss_first=r["losses"][0],
            loss_last=r["losses"][-1],
            held_out_loss=r["held_out_loss"],
        )
    return out


def summary_line(name: str, job: dict) -> str:
    memory = ", ".join(f"{r['peak_memory_bytes'] / 2**20:.0f}" for r in job["ranks"])
    if "result" not in job:
        return f"[{name}] this node's ranks done; peak MiB per rank: {memory}"
    r = job["result"]
    return (
        f"[{name}] world {r['world_size']}, global batch {r['global_batch']}: loss {r['losses'][0]:.4f} -> "
        f"{r['losses'][-1]:.4f}, held-out {r['held_out_loss']:.4f}; peak MiB per rank: {memory}"
    )


def memory_table(metrics: dict) -> str:
    """DeepSpeed's model-state estimates for T5-large / T5-3B on 1 GPU, then this run's measured peaks."""
    lines = ["DeepSpeed's estimate of model states on 1 GPU (GiB, GPU / CPU; activations excluded):"]
    for r in (r for r in metrics["estimates"] if r["gpus"] == 1):
        offload = " + offload" if r["offload"] else ""
        lines.append(f"  {r['model']:<9} ZeRO-{r['stage']}{offload:<10} {r['gpu_gib']:6.2f} / {r['cpu_gib']:6.1f}")
    lines.append("Measured here, peak per rank (MiB):")
    for name, job in metrics["jobs"].items():
        lines.append(f"  {name:<10} {job['peak_memory_mib_per_rank']} ({job['peak_memory_kind']})")
    return "\n".join(lines)


def fingerprint(cfg: dict, repo_root: Path) -> str:
    """``hub_or_files_fingerprint`` with the Hub dataset's configuration (``wmt16`` ``ro-en``) in its name."""
    named = {**cfg, "hub_dataset": f"{cfg['hub_dataset']}/{cfg['hub_config']}"}
    return hub_or_files_fingerprint(named, repo_root, ("train", "validation"))


def left_out(jobs: dict, stages: list[int], saved_checkpoint: str | None) -> dict:
    """``not_run`` for the checks of launches this run's settings left out (``SET=zero_stage=3``, ...),
    and for checkpoint files of every launch but the one that saved the checkpoint."""
    not_run = {}
    for stage in (2, 3):
        for world in (1, 2):
            name = f"zero{stage}-np{world}"
            if name != saved_checkpoint:
                not_run[f"{name}/checkpoint/"] = "only the last launch saves a ZeRO checkpoint (resume_check)"
            if name not in jobs:
                not_run[f"jobs.{name}."] = not_run[f"{name}/"] = (
                    f"no launch {name} in this run (zero_stage, nproc_per_node, also_single_process)"
                )
    for world in (1, 2):
        if len(stages) < 2 or not any(j["result"]["world_size"] == world for j in jobs.values()):
            why = (
                "one ZeRO stage ran (zero_stage lists one)"
                if len(stages) < 2
                else f"no launch with {world} process(es)"
            )
            not_run[f"stages.max_abs_weight_diff_np{world}"] = why
    if not saved_checkpoint:
        not_run["resume."] = "resume_check is false"
    return not_run


def reload_diff(folder: Path, dtype: torch.dtype) -> tuple[float, float]:
    """The saved model loaded by plain Transformers (in the training precision) vs the trained one:
    ``(max |logit difference|, fraction of positions with the same most likely token)``."""
    from transformers import DataCollatorForSeq2Seq, T5ForConditionalGeneration

    saved = torch.load(folder / "logits.pt")
    model = T5ForConditionalGeneration.from_pretrained(folder / "model", dtype=dtype).eval()
    job = json.loads((folder / "job.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in Path(job["tokenized"]).read_text(encoding="utf-8").splitlines()]
    held_out = [r for r in rows if r["split"] == "validation"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    batch = DataCollatorForSeq2Seq(tokenizer, model=model)(
        [{"input_ids": held_out[i]["input_ids"], "labels": held_out[i]["labels"]} for i in saved["rows"]]
    )
    with torch.no_grad():
        logits = model(**batch).logits.float()
    agreement = (logits.argmax(-1) == saved["logits"].argmax(-1)).float().mean()
    return float((logits - saved["logits"]).abs().max()), float(agreement)


def compare_stages(run_dir: Path, jobs: dict, stages: list[int]) -> dict:
    """Max |weight difference| between the models ZeRO-2 and ZeRO-3 trained at the same world size."""
    from transformers import T5ForConditionalGeneration

    out = {}
    if len(stages) < 2:
        return out
    for world in sorted({j["result"]["world_size"] for j in jobs.values()}):
        a, b = (
            T5ForConditionalGeneration.from_pretrained(run_dir / f"zero{s}-np{world}" / "model") for s in stages[:2]
        )
        diff = max(
            float((p - q).abs().max()) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        )
        out[f"max_abs_weight_diff_np{world}"] = diff
    return out


if __name__ == "__main__":
    raise SystemExit(main("deepspeed-zero", run))
