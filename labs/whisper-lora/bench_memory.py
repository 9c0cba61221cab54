"""Peak accelerator memory and training throughput of the full profile, without downloading weights.

Builds ``openai/whisper-large-v2``'s architecture with random weights (its config.json: d_model 1280,
32 + 32 layers, 20 heads, FFN 5120, 80 mel bins, vocabulary 51865), saves it, and runs the full
profile's path on it: int8 loading, ``prepare_model_for_kbit_training``, the LoRA adapter and
``Seq2SeqTrainer`` steps at the full profile's batch size and precision, on random 30 s log-mel
inputs and random labels. Answers "does the course's 16 GB GPU suffice?" on any GPU host.

    python labs/whisper-lora/bench_memory.py --steps 5 [--label-length 48] [--out bench.json]
    python labs/whisper-lora/bench_memory.py --arch tiny --device cpu --steps 1   # the CPU self-test

Prints (and writes to ``--out``) a JSON object: peak memory in bytes and GiB, samples per second,
the settings used, and the accelerator's name.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

from labkit.config import get_lab, load_profile  # noqa: E402
from labkit.device import accelerator_info, peak_memory_bytes, reset_peak_memory, select_device  # noqa: E402

from train import add_lora, build_trainer, load_base_model  # noqa: E402

ARCHS = {
    "large-v2": dict(
        d_model=1280,
        encoder_layers=32,
        decoder_layers=32,
        encoder_attention_heads=20,
        decoder_attention_heads=20,
        encoder_ffn_dim=5120,
        decoder_ffn_dim=5120,
    ),
    "tiny": dict(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
    ),
}


class RandomSpeech(torch.utils.data.Dataset):
    """``n`` examples of random (80, 3000) log-mel features and ``label_length`` random token ids."""

    def __init__(self, n: int, label_length: int, vocab_size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.features = torch.randn(n, 80, 3000, generator=g)
        self.labels = torch.randint(0, vocab_size - 1000, (n, label_length), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_features": self.features[i], "labels": self.labels[i]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="large-v2")
    parser.add_argument("--device", default="accelerator")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--label-length", type=int, default=48, help="tokens per transcript")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the full profile's")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    config = load_profile(get_lab("whisper-lora"), "full")[0]
    device = select_device(args.device)
    training = dict(
        config["training"],
        max_steps=args.steps,
        eval_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
        use_cpu=device == "cpu",
        fp16=device == "cuda",
        report_to="none",
    )
    if args.batch_size:
        training["per_device_train_batch_size"] = args.batch_size
    batch = training["per_device_train_batch_size"]

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        WhisperForConditionalGeneration(WhisperConfig(num_mel_bins=80, **ARCHS[args.arch])).save_pretrained(tmp)
        reset_peak_memory(device)
        model = add_lora(load_base_model(tmp, config["model"]["load_in_8bit"], device), config["lora"])
        data = RandomSpeech(batch * args.steps, args.label_length, model.config.vocab_size)
        trainer = build_trainer(model, training, Path(tmp) / "out", data, None)
        result = trainer.train()
    peak = peak_memory_bytes(device)
    report = {
        "arch": args.arch,
        "device": device,
        "accelerator": accelerator_info(device).get("name"),
        "batch_size": batch,
        "steps": args.steps,
        "label_length": args.label_length,
        "fp16": training["fp16"],
        "load_in_8bit": config["model"]["load_in_8bit"],
        "lora_r": config["lora"]["r"],
        "peak_memory_bytes": peak,
        "peak_memory_gib": round(peak / 2**30, 2),
        "train_samples_per_second": result.metrics["train_samples_per_second"],
        "final_loss": result.training_loss,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
