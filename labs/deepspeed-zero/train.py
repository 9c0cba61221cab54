"""Step 4 on every rank: train T5 under DeepSpeed ZeRO (started by `deepspeed` or `torchrun`).

``run.py`` writes a job file and starts this script through a launcher; each rank then:

1. joins the process group (``deepspeed.init_distributed``: NCCL on GPUs, HCCL on Ascend, gloo on a CPU);
2. fills the config's ``"auto"`` values from ``Seq2SeqTrainingArguments``, as the Trainer's
   ``--deepspeed`` does (``HfTrainerDeepSpeedConfig``, Transformers' own integration), and under
   ZeRO-3 keeps an ``HfDeepSpeedConfig`` alive so ``from_pretrained`` builds the model already
   partitioned (``zero.Init``);
3. trains with the DeepSpeed engine (``deepspeed.initialize``; ``engine.backward``/``engine.step``,
   which own gradient accumulation, clipping, mixed precision and the ZeRO partitioning). The
   batch of optimizer step ``s`` is a fixed function of ``s``, so a resumed run reads exactly what
   the uninterrupted one read;
4. saves a ZeRO checkpoint (``engine.save_checkpoint``: every rank's partition, optimizer,
   scheduler, step) at ``save_checkpoint_at`` or resumes from one (``engine.load_checkpoint``);
5. computes held-out loss and the logits of one fixed batch (``logits.pt``), and saves the full
   weights (``engine.save_16bit_model``: under ZeRO-3 gathered to rank 0 because the config sets
   ``stage3_gather_16bit_weights_on_model_save``), which ``run.py`` reloads without DeepSpeed.

Why not ``Trainer(deepspeed=...)`` as the course's ``run_translation.py``: on a machine without a GPU
Accelerate does not hand the model to DeepSpeed (it falls back to plain DDP), and the smoke
profile must run DeepSpeed itself. The engine loop below is what the Trainer runs inside.

Per rank it writes ``rank<N>.json`` (losses, step times, peak memory); rank 0 also ``result.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import deepspeed  # noqa: E402
import torch  # noqa: E402

from labkit.lab.device import PeakMemory  # noqa: E402


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


def deepspeed_engine(ds_json: dict, training: dict, device: str, out: Path, load_model):
    """Step 2-3 on one rank: the config's ``"auto"`` values filled as the Trainer fills them, the model
    built by ``load_model()`` (partitioned while it loads under ZeRO-3), the DeepSpeed engine.

    Returns:
        ``(engine, model, filled config)``.
    """
    from transformers import Seq2SeqTrainingArguments
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, HfTrainerDeepSpeedConfig

    args = Seq2SeqTrainingArguments(output_dir=str(out / "trainer"), use_cpu=device == "cpu", report_to=[], **training)
    ds_config = HfTrainerDeepSpeedConfig(ds_json)
    ds_config.trainer_config_process(args)
    keep_alive = HfDeepSpeedConfig(ds_config.config) if ds_config.is_zero3() else None  # noqa: F841 (zero.Init)
    model = load_model()
    ds_config.trainer_config_finalize(args, model, training["max_steps"])
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config.config
    )
    return engine, model, ds_config.config


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    out = Path(job["out_dir"])
    if job["device"] == "cpu":
        # DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce at start-up wherever a C++
        # compiler exists (about a minute, then cached); the images have none and use gloo's. Same
        # here, so the smoke runs alike everywhere (DeepSpeed keeps this dict editable: ops/__init__.py).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = job["device"]
    if device != "cpu":
        deepspeed.get_accelerator().set_device(local_rank)

    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, T5ForConditionalGeneration

    training = job["training"]
    tokenizer = AutoTokenizer.from_pretrained(job["model"], revision=job["revision"])
    same_inputs_everywhere(job, tokenizer, rank)

    def load():
        return T5ForConditionalGeneration.from_pretrained(job["model"], revision=job["revision"])

    peak = PeakMemory(device)
    with peak:
        engine, model, config = deepspeed_engine(job["ds_config"], training, device, out, load)
        if rank == 0:
            (out / "ds_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        collate = DataCollatorForSeq2Seq(tokenizer, model=model)
        rows = [json.loads(line) for line in Path(job["tokenized"]).read_text(encoding="utf-8").splitlines()]
        train, held_out = [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "validation"]
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(training["seed"])).tolist()

        def batch(indices: list[int], source: list[dict]) -> dict:
            features = [{"input_ids": source[i]["input_ids"], "labels": source[i]["labels"]} for i in indices]
            return {k: v.to(engine.device) for k, v in collate(features).items()}

        start = 0
        if job.get("resume_from"):
            # An explicit tag: the "latest" file is written by global rank 0 only, on its node.
            path, client = engine.load_checkpoint(job["resume_from"], tag=job["checkpoint_tag"])
            if path is None:
                raise SystemExit(
                    f"error: no ZeRO checkpoint {job['checkpoint_tag']} under {job['resume_from']} (rank {rank})"
                )
            start = client["step"]
        micro, accumulation = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
        losses, step_times = [], []
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
            if job.get("save_checkpoint_at") == step + 1:
                engine.save_checkpoint(
                    str(out / "checkpoint"), tag=job["checkpoint_tag"], client_state={"step": step + 1}
                )

        engine.eval()
        held_loss, logits = [], None
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
    (out / f"rank{rank}.json").write_text(json.dumps(report) + "\n", encoding="utf-8")
    if rank == 0:
        torch.save({"logits": logits, "rows": fixed}, out / "logits.pt")
        tokenizer.save_pretrained(out / "model")
        model.config.save_pretrained(out / "model")
        result = {
            "world_size": world,
            "zero_stage": config["zero_optimization"]["stage"],
            "micro_batch": micro,
            "gradient_accumulation_steps": accumulation,
            "global_batch": micro * world * accumulation,
            "first_step": start,
            "losses": losses,
            "held_out_loss": sum(held_loss) / len(held_out),
        }
        (out / "result.json").write_text(json.dumps(result) + "\n", encoding="utf-8")
    torch.distributed.barrier()


if __name__ == "__main__":
    main(next(a for a in sys.argv[1:] if not a.startswith("--local_rank")))
