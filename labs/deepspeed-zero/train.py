"""Step 4 on every rank: train T5 under DeepSpeed ZeRO (started by `deepspeed` or `torchrun`).

``run.py`` writes one job file per configuration (ZeRO stage) of a launch and starts this script
through a launcher with all of them (``train.py zero2-np2/job.json zero3-np2/job.json``); the ranks
run the jobs one after another, each from a fresh model, engine and seed, so a job trains exactly
what it would in a launch of its own (``README.md``: measured equal). For each job every rank:

1. has joined the process group (``deepspeed.init_distributed``: NCCL on GPUs, HCCL on Ascend,
   gloo on a CPU) once for the launch;
2. takes the DeepSpeed config ``run.py`` filled and checked before launching (``"auto"`` values
   filled from ``Seq2SeqTrainingArguments`` as the Trainer's ``--deepspeed`` fills them:
   ``zero.prepare_ds_config``), and under ZeRO-3 keeps an ``HfDeepSpeedConfig`` alive while
   ``from_pretrained`` builds the model already partitioned (``zero.Init``);
3. trains with the DeepSpeed engine (``deepspeed.initialize``; ``engine.backward``/``engine.step``,
   which own gradient accumulation, clipping, mixed precision and the ZeRO partitioning). The
   batch of optimizer step ``s`` is a fixed function of ``s``, so a resumed run reads exactly what
   the uninterrupted one read;
4. saves ZeRO checkpoints (``engine.save_checkpoint``: every rank's partition, optimizer, scheduler,
   step, the losses so far) at ``save_checkpoint_at`` and every ``checkpoint_every`` steps, or
   resumes from one: a planned resume (``resume_from``, a new launch) or, after a rank died and
   torchrun restarted the ranks (``--max-restarts``), the job's own newest checkpoint that every
   rank completed; jobs every rank had finished are skipped;
5. computes held-out loss and the logits of one fixed batch (``logits.pt``), and saves the full
   weights (``engine.save_16bit_model``: under ZeRO-3 gathered to rank 0 because the config sets
   ``stage3_gather_16bit_weights_on_model_save``), which ``run.py`` reloads without DeepSpeed.

Why not ``Trainer(deepspeed=...)`` as the course's ``run_translation.py``: on a machine without a GPU
Accelerate does not hand the model to DeepSpeed (it falls back to plain DDP), and the smoke
profile must run DeepSpeed itself. The engine loop below is what the Trainer runs inside.

Per job and rank it writes ``rank<N>.json`` (losses, step times, peak memory); rank 0 also
``result.json`` and ``progress.json`` (the last step done, for the restart figures).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import deepspeed  # noqa: E402
import torch  # noqa: E402

from labkit.lab.device import PeakMemory  # noqa: E402

#: Written in a checkpoint's folder once every rank of the node has saved its part (after DeepSpeed's barrier).
COMPLETE = "complete.json"
#: Periodic checkpoints kept per job (the newest complete ones; the planned resume's is always kept).
KEEP_CHECKPOINTS = 2


def batches_for_step(
    step: int, rank: int, world: int, micro: int, accumulation: int, order: list[int]
) -> list[list[int]]:
    """Row indices of each micro-batch this rank reads in optimizer step ``step``.

    A global step reads ``micro * world * accumulation`` consecutive rows of ``order`` (a seeded
    permutation, wrapping around): micro-batch ``k`` of rank ``r`` is the ``k * world + r``-th slice.
    A function of the step alone, so resuming at step ``s`` reads what an uninterrupted run reads.
    """
    size = micro * world * accumulation
    start = step * size
    out = []
    for k in range(accumulation):
        first = start + (k * world + rank) * micro
        out.append([order[(first + i) % len(order)] for i in range(micro)])
    return out


def same_inputs_everywhere(job: dict, tokenizer, rank: int) -> None:
    """Stop unless every rank holds the same tokenized data and vocabulary (each node of a multi-node
    run prepares its own copy; a mismatch would train on inconsistent data or hang)."""
    digest = hashlib.sha256(Path(job["tokenized"]).read_bytes())
    digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    everyone = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, digest.hexdigest())
    if len(set(everyone)) > 1:
        raise SystemExit(
            f"error: ranks hold different data or tokenizers (rank {rank}: {digest.hexdigest()[:12]}, all: "
            f"{sorted({d[:12] for d in everyone})}): run every node from the same commit, data and model revision"
        )


def complete_steps(folder: Path) -> set[int]:
    """Steps of the checkpoints under ``folder`` that this node finished writing (:data:`COMPLETE`)."""
    steps = set()
    for marker in folder.glob(f"step*/{COMPLETE}"):
        try:
            steps.add(int(json.loads(marker.read_text(encoding="utf-8"))["step"]))
        except (OSError, ValueError, KeyError):
            continue  # a marker cut short by the failure: that checkpoint does not count
    return steps


def newest_common_checkpoint(folder: Path) -> int | None:
    """The newest checkpoint step every rank holds complete (each node keeps its own ranks' files
    with node-local storage), or ``None``. A collective: every rank calls it."""
    everyone = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, sorted(complete_steps(folder)))
    common = set.intersection(*(set(steps) for steps in everyone))
    return max(common) if common else None


def save_checkpoint(engine, folder: Path, step: int, client: dict, keep_step: int | None) -> None:
    """``engine.save_checkpoint`` as ``step<N>``, then this node's :data:`COMPLETE` marker, then the
    node's older periodic checkpoints beyond :data:`KEEP_CHECKPOINTS` removed (never ``keep_step``)."""
    engine.save_checkpoint(str(folder), tag=f"step{step}", client_state=client)  # ends in a barrier
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        marker = folder / f"step{step}" / COMPLETE
        marker.write_text(json.dumps({"step": step, "world_size": torch.distributed.get_world_size()}) + "\n")
        for old in sorted(complete_steps(folder))[:-KEEP_CHECKPOINTS]:
            if old != keep_step:
                shutil.rmtree(folder / f"step{old}", ignore_errors=True)
    torch.distributed.barrier()


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def deepspeed_engine(ds_config: dict, load_model):
    """Step 2-3 on one rank: the model built by ``load_model()`` (partitioned while it loads under
    ZeRO-3: ``HfDeepSpeedConfig`` alive makes ``from_pretrained`` use ``zero.Init``), the DeepSpeed engine."""
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    zero3 = ds_config.get("zero_optimization", {}).get("stage") == 3
    keep_alive = HfDeepSpeedConfig(ds_config) if zero3 else None
    try:
        model = load_model()
        engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config
        )
    finally:
        del keep_alive
        unset_hf_deepspeed_config()  # the next job of this launch may be ZeRO-2
    return engine, model


def job_done(out: Path, rank: int) -> bool:
    """Whether every rank finished this job (before a restart); a collective."""
    mine = torch.tensor([int((out / f"rank{rank}.json").is_file() and (rank or (out / "result.json").is_file()))])
    torch.distributed.all_reduce(mine, op=torch.distributed.ReduceOp.MIN)
    return bool(mine.item())


def run_job(job: dict, rank: int, world: int, attempt: int) -> None:
    """One configuration on this rank: train (resuming where a checkpoint says), evaluate, save.
    ``attempt``: torchrun's restarts so far (the most any node's agent counted)."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, T5ForConditionalGeneration

    out = Path(job["out_dir"])
    device, training = job["device"], job["training"]
    if job.get("deterministic"):  # the profile's `deterministic`, on every rank (labkit.lab.runner.seed_everything)
        from transformers import enable_full_determinism

        enable_full_determinism(training["seed"])
    torch.manual_seed(training["seed"])  # the same start in a launch of its own and after another job
    tokenizer = AutoTokenizer.from_pretrained(job["model"], revision=job["revision"])
    same_inputs_everywhere(job, tokenizer, rank)

    def load():
        return T5ForConditionalGeneration.from_pretrained(job["model"], revision=job["revision"])

    peak = PeakMemory(device)
    with peak:
        engine, model = deepspeed_engine(job["ds_config"], load)
        collate = DataCollatorForSeq2Seq(tokenizer, model=model)
        rows = [json.loads(line) for line in Path(job["tokenized"]).read_text(encoding="utf-8").splitlines()]
        train, held_out = [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "validation"]
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(training["seed"])).tolist()

        def batch(indices: list[int], source: list[dict]) -> dict:
            features = [{"input_ids": source[i]["input_ids"], "labels": source[i]["labels"]} for i in indices]
            return {k: v.to(engine.device) for k, v in collate(features).items()}

        start = first_step = 0
        losses, restarts = [], []
        checkpoints = out / "checkpoint"
        own = newest_common_checkpoint(checkpoints)
        if own is not None:  # torchrun restarted the ranks: this job's newest checkpoint all ranks completed
            _, client = engine.load_checkpoint(str(checkpoints), tag=f"step{own}")
            start, first_step, losses = client["step"], client["first_step"], list(client["losses"])
            restarts = list(client.get("restarts", []))
        elif job.get("resume_from"):
            # An explicit tag: the "latest" file is written by global rank 0 only, on its node.
            path, client = engine.load_checkpoint(job["resume_from"], tag=job["checkpoint_tag"])
            if path is None:
                raise SystemExit(
                    f"error: no ZeRO checkpoint {job['checkpoint_tag']} under {job['resume_from']} (rank {rank})"
                )
            start = first_step = client["step"]
        progress = out / "progress.json"
        if rank == 0 and progress.is_file():  # this job was running when a rank died (run folders are new)
            last = json.loads(progress.read_text(encoding="utf-8"))
            restarts.append(
                {
                    "attempt": attempt,
                    "resumed_from_step": start,
                    "last_step_done": last["step"],
                    "steps_lost": last["step"] - start,
                    "resume_s": round(time.time() - last["time"], 1),
                }
            )
            print(f"[rank 0] {out.name}: restart {attempt}: {restarts[-1]}", flush=True)
        micro, accumulation = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
        every, planned = job.get("checkpoint_every") or 0, job.get("save_checkpoint_at")
        step_times = []
        engine.train()
        for step in range(start, training["max_steps"]):
            t0 = time.perf_counter()
            # Dropout masks as a function of the step (and rank), so a resumed run draws what the
            # uninterrupted one drew (the Trainer saves and restores RNG states for the same reason).
            torch.manual_seed(training["seed"] * 100_003 + step * 1_009 + rank)
            total = torch.zeros((), device=engine.device)
            for indices in batches_for_step(step, rank, world, micro, accumulation, order):
                loss = engine(**batch(indices, train)).loss
                engine.backward(loss)
                engine.step()
                total += loss.detach().float()
            torch.distributed.all_reduce(total)
            mean = total.item() / (world * accumulation)
            if not math.isfinite(mean):
                raise SystemExit(
                    f"error: loss is {mean} at step {step + 1} (rank {rank}): training diverged; with fp16 this is "
                    "T5's known overflow, use bf16 or fp32"
                )
            losses.append(mean)
            step_times.append(time.perf_counter() - t0)
            done = step + 1
            if rank == 0:
                write_json_atomic(out / "progress.json", {"step": done, "time": time.time(), "attempt": attempt})
            if done == planned or (every and done % every == 0 and done < training["max_steps"]):
                client = {"step": done, "first_step": first_step, "losses": losses, "restarts": restarts}
                save_checkpoint(engine, checkpoints, done, client, planned)

        engine.eval()
        held_loss = []
        with torch.no_grad():
            fixed = list(range(min(len(held_out), job["eval_batch_size"])))
            logits = engine(**batch(fixed, held_out)).logits.float().cpu()
            for first in range(0, len(held_out), job["eval_batch_size"]):
                indices = list(range(first, min(first + job["eval_batch_size"], len(held_out))))
                held_loss.append(engine(**batch(indices, held_out)).loss.float().item() * len(indices))
        if not engine.save_16bit_model(str(out / "model")):
            raise SystemExit(
                "error: the model was not saved: a ZeRO-3 config needs "
                '"stage3_gather_16bit_weights_on_model_save": true (configs/ds_zero3.json has it)'
            )
    report = {
        "rank": rank,
        "world_size": world,
        "node": os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", "0")),
        "host": os.uname().nodename,
        "losses": losses,
        "step_s": step_times,
        "peak_memory_bytes": peak.bytes,
        "peak_memory_kind": "max_memory_allocated" if device != "cpu" else "resident set size",
    }
    if rank == 0:
        torch.save({"logits": logits, "rows": fixed}, out / "logits.pt")
        tokenizer.save_pretrained(out / "model")
        model.config.save_pretrained(out / "model")
        result = {
            "world_size": world,
            "zero_stage": job["ds_config"]["zero_optimization"]["stage"],
            "micro_batch": micro,
            "gradient_accumulation_steps": accumulation,
            "global_batch": micro * world * accumulation,
            "first_step": first_step,
            "losses": losses,
            "held_out_loss": sum(held_loss) / len(held_out),
            "restarts": restarts,
        }
        (out / "result.json").write_text(json.dumps(result) + "\n", encoding="utf-8")
    (out / f"rank{rank}.json").write_text(json.dumps(report) + "\n", encoding="utf-8")  # last: the job is done
    engine.destroy()
    torch.distributed.barrier()


def pickle_zero_stage_by_value() -> None:
    """ZeRO optimizer states hold ``zero_stage`` as a ``ZeroStageEnum`` member, which CPython 3.11.2
    (the images' Debian python3.11) pickles by name (``getattr(ZeroStageEnum, "weights")``) and 3.11.7
    by value (``ZeroStageEnum(3)``): the same checkpoint, other bytes in ``*_optim_states.pt``. By
    value on every interpreter (either loads both), so a container's checkpoints equal a native run's."""
    from deepspeed.runtime.zero.config import ZeroStageEnum

    ZeroStageEnum.__reduce_ex__ = lambda self, protocol: (type(self), (int(self),))


def main(job_paths: list[str]) -> None:
    jobs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in job_paths]
    pickle_zero_stage_by_value()
    device = jobs[0]["device"]
    if device == "cpu":
        # DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce at start-up wherever a C++
        # compiler exists (about a minute, then cached); the images have none and use gloo's. Same
        # here, so the smoke runs alike everywhere (DeepSpeed keeps this dict editable: ops/__init__.py).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        # One intra-op thread per rank: the smoke model's ops are tiny, and threads that wait on each
        # other on a busy machine made steps 10-20x slower (README); and the numbers then do not
        # depend on the core count.
        torch.set_num_threads(1)
    deepspeed.init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if device != "cpu":
        deepspeed.get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", 0)))
    # A node whose agent restarted its ranks because another node's rank died counts no restart of
    # its own (torchrun: a membership change): the most any node counted.
    attempt = torch.tensor([int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))])
    torch.distributed.all_reduce(attempt, op=torch.distributed.ReduceOp.MAX)
    for job in jobs:
        if job_done(Path(job["out_dir"]), rank):
            print(f"[rank {rank}] {Path(job['out_dir']).name}: finished before the restart, skipped", flush=True)
            continue
        run_job(job, rank, world, int(attempt.item()))
        gc.collect()  # the job's engine and model, before the next job builds its own
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main([a for a in sys.argv[1:] if not a.startswith("--local_rank")])
