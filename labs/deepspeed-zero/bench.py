"""Benchmark the full profile's training step under ZeRO-2 and ZeRO-3 (``invoke bench --lab deepspeed-zero``).

t5-large's architecture (``zero.T5_SIZES``, from google-t5/t5-large config.json) with random weights,
trained the lab's way on one process: the lab's DeepSpeed configs with ``"auto"`` filled from the
full profile's training settings (bf16 on CUDA; ``zero.prepare_ds_config``), the engine's forward /
backward / step (``train.deepspeed_engine``), on random rows of ``max_source_length`` +
``max_target_length`` tokens.
Each batch size is measured under ZeRO-2 and ZeRO-3 (the table's variants); several GPUs are the
lab's own launches (``make lab-deepspeed-zero NPROC=N``), whose per-rank peaks ``metrics.json`` holds.

    python labs/deepspeed-zero/bench.py --batch-sizes 1,4,8,16 --steps 5
    python labs/deepspeed-zero/bench.py --arch tiny --device cpu --steps 1   # the CPU self-test

MFU counts ``3 * N`` FLOPs per token over source + target tokens, N the non-embedding parameters:
each encoder parameter sees the source tokens and each decoder parameter the target tokens, so a
sample costs ``6 * (N_enc * S + N_dec * T)``, which with ``S = T`` is ``3 * N * (S + T)``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from transformers import AutoModelForSeq2SeqLM, T5Config  # noqa: E402

from labkit.config import get_lab, load_profile  # noqa: E402
from labkit.lab.bench import Bench, main, non_embedding_params, scratch_dir  # noqa: E402
from labkit.lab.timing import synchronize  # noqa: E402

from train import deepspeed_engine  # noqa: E402
from zero import T5_SIZES, config_path, prepare_ds_config, read_ds_config, training_arguments  # noqa: E402

LAB_DIR = Path(__file__).resolve().parent
TINY = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


def single_process_group() -> None:
    """Rank 0 of 1 (the bench runs without a launcher): the variables a launcher would set."""
    import deepspeed

    if not torch.distributed.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1").items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(port))
        if deepspeed.get_accelerator().device_name() == "cpu":
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # as train.py
        deepspeed.init_distributed()


def make(arch: str, device: str) -> Bench:
    cfg = load_profile(get_lab("deepspeed-zero"), "full")[0]
    size, vocab = (T5_SIZES["t5-large"], 32128) if arch == "full" else (TINY, 400)
    source, target = (
        (cfg["data"]["max_source_length"], cfg["data"]["max_target_length"]) if arch == "full" else (32, 32)
    )
    config = T5Config(vocab_size=vocab, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **size)
    with torch.device("meta"):
        params = non_embedding_params(AutoModelForSeq2SeqLM.from_config(config))
    single_process_group()

    def step(batch: int, n: int, variant: str) -> tuple[list[float], dict]:
        stage, path = int(variant[-1]), config_path(LAB_DIR / "configs", int(variant[-1]), False)
        training = dict(cfg["training"], per_device_train_batch_size=batch, max_steps=n, seed=0)
        training.update(bf16=device == "cuda" and torch.cuda.get_device_capability()[0] >= 8)  # no emulated bf16
        args = training_arguments(training, device, Path(scratch_dir()))
        ds_config = prepare_ds_config(
            read_ds_config(path), path, stage=stage, model_type="t5", hidden_size=config.d_model, args=args,
            world_size=1, max_steps=n,
        )  # fmt: skip
        engine, _ = deepspeed_engine(ds_config, lambda: AutoModelForSeq2SeqLM.from_config(config))
        g = torch.Generator().manual_seed(0)
        times = []
        for _ in range(n):
            rows = {
                "input_ids": torch.randint(2, vocab, (batch, source), generator=g),
                "labels": torch.randint(2, vocab, (batch, target), generator=g),
            }
            rows = {k: v.to(engine.device) for k, v in rows.items()}
            synchronize(device)
            t0 = time.perf_counter()
            loss = engine(**rows).loss
            engine.backward(loss)
            engine.step()
            synchronize(device)
            times.append(time.perf_counter() - t0)
        final = round(float(loss), 4)
        engine.destroy()
        return times, {"final_loss": final}

    return Bench(
        what=f"t5 architecture ({arch}, {params:,} non-embedding parameters), random weights, DeepSpeed engine, "
        f"rows of {source} + {target} tokens, one process",
        setting="per_device_train_batch_size",
        default_batch=cfg["training"]["per_device_train_batch_size"],
        tokens_per_sample=source + target,
        flops_per_token=3.0 * params,
        flops_note=f"3 x {params:,} non-embedding parameters per source or target token (6 N per token on each "
        "side of an encoder-decoder with S = T; module docstring)",
        step=step,
        variants=("zero2", "zero3"),
    )


if __name__ == "__main__":
    main("deepspeed-zero", make)
