"""``invoke bench``: a lab's full-profile step at full size, on random weights, swept over batch sizes.

A lab's ``bench.py`` describes its real code path once (quantized load, adapters, Trainer, precision)
as a :class:`Bench`; :func:`main` runs it for each batch size and reports, per row:

* ``peak_allocated_gib`` / ``peak_reserved_gib``: ``torch.cuda.max_memory_allocated`` /
  ``max_memory_reserved`` over the whole row (warm-up included); on the CPU the process's resident
  set size sampled during the row (``labkit.lab.device.PeakMemory``), so the column says RSS there;
* ``samples_per_s`` and ``tokens_per_s``: from the median step time after ``--warmup`` untimed steps
  (``labkit.lab.timing``: the first steps pay CUDA start-up and kernel loading);
* ``mfu``: model FLOPs utilisation where the lab defines FLOPs per token (``6 * N`` for training a
  transformer with N parameters on every token, Kaplan et al. 2020, "Scaling Laws for Neural
  Language Models", sec. 2.1; ``2 * N`` per generated token), over the GPU's dense bf16/fp16 peak
  from :data:`PEAK_TFLOPS`; ``None`` elsewhere, and the lab says what it counts.

Weights are random (built from a config defined in the lab, with its source), so nothing is
downloaded. A row that runs out of memory is reported as ``oom`` and the sweep goes on. The CPU
self-test (``--arch tiny --device cpu``) runs in every lab's unit tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from labkit.lab.device import PeakMemory, accelerator_info, select_device
from labkit.lab.timing import synchronize

#: Dense fp16/bf16 tensor-core peak in TFLOP/s (no sparsity), from NVIDIA's datasheets, matched as a
#: regular expression against ``torch.cuda.get_device_name()`` (e.g. "NVIDIA H100 80GB HBM3"). MFU
#: is reported only for GPUs listed here.
PEAK_TFLOPS = {
    r"\bH200\b": 989.0,  # H200 SXM: 1,979 with sparsity
    r"\bH100\b.*(HBM3|SXM)": 989.0,  # H100 SXM5
    r"\bH100\b.*PCIe": 756.0,
    r"\bA100\b": 312.0,
    r"\bL40S\b": 362.0,
    r"\bL4\b": 121.0,
    r"\bT4\b": 65.0,
    r"\bV100\b": 125.0,  # SXM2
}


@dataclass
class Row:
    """One batch size's result (see the module docstring for each field's unit)."""

    batch: int
    variant: str = ""  # e.g. the quantization method (fp16, int8, nf4); "" for labs with one
    status: str = "ok"  # ok | oom | error: <message>
    steps: int = 0
    step_s: float | None = None
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    peak_allocated_gib: float | None = None
    peak_reserved_gib: float | None = None
    mfu: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Bench:
    """What a lab benchmarks.

    Attributes:
        what: one line naming the model, path and precision (printed with the table).
        setting: the profile setting the sweep varies (``per_device_train_batch_size``).
        default_batch: its value in ``profiles/full.yaml``.
        tokens_per_sample: tokens one sample contributes to ``tokens_per_s`` (0: not reported).
        flops_per_token: model FLOPs per token for MFU (or one per variant), or ``None`` (say why in
            ``flops_note``).
        flops_note: what the FLOPs count (or why there is no MFU).
        step: ``step(batch, n, variant) -> (list of n step times in s, extra dict)``: builds what it
            needs for ``batch``, runs ``n`` steps, synchronizes the device after each, returns their
            wall times.
        variants: what each batch size is measured with (quantization: fp16, int8, nf4); one ``""``
            for labs with a single path.
    """

    what: str
    setting: str
    default_batch: int
    tokens_per_sample: int
    flops_per_token: float | dict[str, float | None] | None
    flops_note: str
    step: Callable[[int, int, str], tuple[list[float], dict]]
    variants: tuple[str, ...] = ("",)


def peak_tflops(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for pattern, v in PEAK_TFLOPS.items() if re.search(pattern, name)), None)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def measure(bench: Bench, batch: int, steps: int, warmup: int, device: str, variant: str = "") -> Row:
    """Run ``warmup + steps`` steps at ``batch``; time the last ``steps`` (median)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    row = Row(batch, variant)
    peak = PeakMemory(device)  # max_memory_allocated on a GPU; sampled RSS on the CPU (this row only)
    try:
        with peak:
            times, row.extra = bench.step(batch, warmup + steps, variant)
            synchronize(device)
    except Exception as exc:  # OOM surfaces as several exception types (torch, bitsandbytes, accelerate)
        row.status = "oom" if is_oom(exc) else f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return row
    finally:
        gc.collect()
    timed = times[warmup:] or times
    row.steps = len(timed)
    row.step_s = statistics.median(timed)
    row.samples_per_s = round(batch / row.step_s, 3)
    if bench.tokens_per_sample:
        row.tokens_per_s = round(batch * bench.tokens_per_sample / row.step_s, 1)
    row.peak_allocated_gib = round(peak.bytes / 2**30, 2)
    if device == "cuda":
        row.peak_reserved_gib = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    tflops = peak_tflops(device)
    flops = bench.flops_per_token
    flops = flops.get(variant) if isinstance(flops, dict) else flops
    if tflops and flops and row.tokens_per_s:
        row.mfu = round(flops * row.tokens_per_s / (tflops * 1e12), 4)
    return row


def table(rows: list[Row], bench: Bench) -> str:
    """A Markdown table of the rows."""
    memory = "peak allocated GiB" if any(r.peak_reserved_gib is not None for r in rows) else "peak RSS GiB"
    head = f"| variant | {bench.setting} | status | step s | samples/s | tokens/s | {memory} "
    head += "| peak reserved GiB | MFU | other |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        cells = [r.variant or "-", r.batch, r.status, r.step_s and round(r.step_s, 3), r.samples_per_s]
        cells += [r.tokens_per_s]
        cells += [r.peak_allocated_gib, r.peak_reserved_gib, r.mfu, ", ".join(f"{k} {v}" for k, v in r.extra.items())]
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark a lab's full-profile step on random weights.")
    parser.add_argument("--arch", choices=("full", "tiny"), default="full", help="tiny: the CPU self-test's size")
    parser.add_argument("--device", default="accelerator", help="accelerator (default), cuda, npu or cpu")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated, e.g. 1,4,8,16 (default: the profile's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--out", type=Path, default=None, help="folder for bench.json and bench.md")
    return parser.parse_args(argv)


def main(lab: str, make: Callable[[str, str], Bench], argv: list[str] | None = None) -> dict:
    """Command line of every lab's ``bench.py``: ``make(arch, device) -> Bench``; returns the report."""
    args = parse_args(argv)
    device = select_device(args.device)
    bench = make(args.arch, device)
    sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [bench.default_batch]
    print(f"[{lab}] bench: {bench.what} on {device}; {bench.setting} in {sizes}", flush=True)
    rows = []
    for variant in bench.variants:
        for batch in sizes:
            row = measure(bench, batch, args.steps, args.warmup, device, variant)
            label = f"{variant} " if variant else ""
            print(f"[{lab}] {label}{bench.setting}={batch}: {row.status}, peak {row.peak_allocated_gib} GiB")
            rows.append(row)
    import platform

    from labkit.rundir import package_versions

    packages = package_versions()
    report = {
        "lab": lab,
        "what": bench.what,
        "arch": args.arch,
        "device": device,
        "accelerator": accelerator_info(device),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {k: packages[k] for k in ("torch", "transformers", "peft", "bitsandbytes", "trl") if k in packages},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "setting": bench.setting,
        "default": bench.default_batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "flops": bench.flops_note,
        "rows": [r.__dict__ for r in rows],
    }
    text = f"{bench.what}\n\n{table(rows, bench)}\n\nMFU: {bench.flops_note}\n"
    print(text, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (args.out / "bench.md").write_text(text, encoding="utf-8")
    return report


def trainer_step_times(device: str):
    """A ``transformers.TrainerCallback`` recording each optimizer step's wall time (``.times``, s)."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize(device)
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            self.times.append(time.perf_counter() - self._start)

    return StepTimes()


class RandomTokens(torch.utils.data.Dataset):
    """``n`` rows of random inputs for a Trainer: ``shapes`` maps a field to (shape, dtype, high).

    ``high`` bounds random integers (token ids, labels); ``None`` draws standard-normal floats.
    """

    def __init__(self, n: int, shapes: dict[str, tuple[tuple[int, ...], torch.dtype, int | None]], seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.rows = [
            {
                key: torch.randint(0, high, shape, generator=g, dtype=dtype)
                if high is not None
                else torch.randn(shape, generator=g, dtype=dtype)
                for key, (shape, dtype, high) in shapes.items()
            }
            for _ in range(n)
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def train_steps(trainer, device: str) -> tuple[list[float], dict]:
    """``trainer.train()`` with a step timer: ``(each optimizer step's seconds, {"final_loss": ...})``."""
    timer = trainer_step_times(device)
    trainer.add_callback(timer)
    result = trainer.train()
    return timer.times, {"final_loss": round(float(result.training_loss), 4)}


def non_embedding_params(model) -> int:
    """Parameters outside embedding tables: Kaplan et al.'s N in ``6 * N`` FLOPs per trained token."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def trainer_bench(
    what: str,
    build_model: Callable[[], torch.nn.Module],
    training: dict,
    shapes: dict,
    device: str,
    tokens_per_sample: int,
) -> Bench:
    """A :class:`Bench` for a lab that trains a Transformers model with ``Trainer`` on fixed-length inputs.

    ``build_model()`` returns a fresh model with random weights; ``training`` is the full profile's
    ``training`` section (TrainingArguments names); ``shapes`` describes one random row
    (:class:`RandomTokens`). MFU counts ``6 * non-embedding parameters`` FLOPs per input token
    (attention's sequence-length term left out).
    """
    from transformers import Trainer, TrainingArguments

    params = non_embedding_params(build_model())

    def step(batch: int, n: int, variant: str = "") -> tuple[list[float], dict]:
        args = TrainingArguments(output_dir=scratch_dir(), **bench_training(training, batch, n, device))
        trainer = Trainer(model=build_model(), args=args, train_dataset=RandomTokens(batch * n, shapes))
        return train_steps(trainer, device)

    return Bench(
        what=what,
        setting="per_device_train_batch_size",
        default_batch=int(training["per_device_train_batch_size"]),
        tokens_per_sample=tokens_per_sample,
        flops_per_token=6.0 * params,
        flops_note=f"6 x {params:,} non-embedding parameters per input token (Kaplan et al. 2020, sec. 2.1); "
        "attention's sequence-length term and padding are not subtracted",
        step=step,
    )


def bench_training(training: dict, batch: int, steps: int, device: str) -> dict:
    """The full profile's ``training`` settings for a bench row: per-device ``batch`` without
    accumulation, ``steps`` optimizer steps, no evaluation, saving, logging integrations or workers,
    fp16 only where the profile asks for it and the device is CUDA."""
    return dict(
        training,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        max_steps=steps,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=device == "cpu",
        fp16=bool(training.get("fp16")) and device == "cuda",
    )


def scratch_dir() -> str:
    """A temporary folder removed when the process exits (bench checkpoints and random weights are
    gigabytes at full size)."""
    import atexit
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="labs-bench-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# --- the GLM chat labs' step (chatglm-qlora, chatglm-private-data) ---------------------------------


GLM_BENCH_ARCHS = {
    "full": {},  # Transformers' GlmConfig() defaults are GLM-4-9B's config.json
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=1000,
        pad_token_id=0,
        eos_token_id=[1],
    ),
}


def glm_bench(lab: str, tokens: int, arch: str, device: str):
    """A :class:`Bench` of the GLM chat labs' training step (``invoke bench``).

    GLM-4-9B's architecture (``arch="full"``: hidden 4096, 40 layers, 32 query / 2 key-value heads,
    MLP 13,696, vocabulary 151,552; ``"tiny"`` for the CPU self-test) with random weights, saved in
    bf16 (19 GB of disk at full size) and loaded as the lab ``lab`` loads it: its full profile's
    4-bit settings and LoRA, ``Trainer`` at its ``training`` settings (bf16 on CUDA, gradient
    checkpointing), on random rows of ``tokens`` tokens. MFU counts ``6 x non-embedding
    parameters`` FLOPs per trained token (Kaplan et al. 2020, sec. 2.1).
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import GlmConfig, GlmForCausalLM, Trainer, TrainingArguments

    from labkit.config import get_lab, load_profile
    from labkit.lab.llm.loading import load_causal_lm

    cfg = load_profile(get_lab(lab), "full")[0]
    folder = scratch_dir()
    torch.manual_seed(0)
    config = GlmConfig(**GLM_BENCH_ARCHS[arch])
    model = GlmForCausalLM(config)
    params = non_embedding_params(model)
    model.to(torch.bfloat16).save_pretrained(folder)
    del model

    def step(batch: int, n: int, variant: str = "") -> tuple[list[float], dict]:
        model = load_causal_lm(str(folder), cfg["model"]["quantization"], device, "sdpa")
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(model, LoraConfig(**cfg["lora"]))
        training = bench_training(cfg["training"], batch, n, device)
        training["bf16"] = device == "cuda"
        args = TrainingArguments(
            output_dir=scratch_dir(), gradient_checkpointing_kwargs={"use_reentrant": False}, **training
        )
        shape = ((tokens,), torch.long, config.vocab_size)
        rows = RandomTokens(batch * n, {"input_ids": shape, "labels": shape})
        return train_steps(Trainer(model=model, args=args, train_dataset=rows), device)

    return Bench(
        what=f"GLM-4-9B architecture ({arch}), random weights, NF4 + double quant, LoRA r={cfg['lora']['r']} on "
        f"q/k/v, Trainer, rows of {tokens} tokens",
        setting="per_device_train_batch_size",
        default_batch=cfg["training"]["per_device_train_batch_size"],
        tokens_per_sample=tokens,
        flops_per_token=6.0 * params,
        flops_note=f"6 x {params:,} non-embedding parameters per trained token (Kaplan et al. 2020, sec. 2.1)",
        step=step,
    )
