"""Benchmark the full profile's training step without downloading weights (``invoke bench --lab whisper-lora``).

Builds ``openai/whisper-large-v2``'s architecture with random weights (its config.json: d_model 1280,
32 + 32 layers, 20 heads, FFN 5120, 80 mel bins, vocabulary 51865), saves it, and runs the full
profile's path on it: int8 loading, ``prepare_model_for_kbit_training``, the LoRA adapter and
``Seq2SeqTrainer`` steps in fp16, on random 30 s log-mel inputs and random labels of
``LABEL_LENGTH`` tokens; the swept setting is ``per_device_train_batch_size`` (no accumulation).

    python labs/whisper-lora/bench.py --batch-sizes 1,4,8,16,64 --steps 5 --out outputs/bench
    python labs/whisper-lora/bench.py --arch tiny --device cpu --steps 1   # the CPU self-test

Tokens are decoder label tokens (48 per clip); MFU is not reported: the encoder's work over 1500
frames dominates and does not scale with the label tokens that ``6 * N * tokens`` would count.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from labkit.config import get_lab, load_profile
from labkit.lab.bench import Bench, RandomTokens, bench_training, main, scratch_dir, train_steps

from train import add_lora, build_trainer, load_base_model

#: openai/whisper-large-v2 config.json (the full profile's model); ``tiny`` is the CPU self-test's.
ARCHS = {
    "full": dict(
        d_model=1280,
        encoder_layers=32,
        decoder_layers=32,
        encoder_attention_heads=20,
        decoder_attention_heads=20,
        encoder_ffn_dim=5120,
        decoder_ffn_dim=5120,
        vocab_size=51865,
    ),
    "tiny": dict(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        vocab_size=51865,
    ),
}
LABEL_LENGTH = 48  # tokens per transcript: a long Common Voice zh-CN sentence with Whisper's prefix


def make(arch: str, device: str) -> Bench:
    config = load_profile(get_lab("whisper-lora"), "full")[0]
    folder = scratch_dir()
    torch.manual_seed(0)  # saved in fp16 like the Hub checkpoint (3 GB at full size, not 6)
    WhisperForConditionalGeneration(WhisperConfig(num_mel_bins=80, **ARCHS[arch])).half().save_pretrained(folder)

    def step(batch: int, n: int, variant: str = "") -> tuple[list[float], dict]:
        model = add_lora(load_base_model(folder, config["model"]["load_in_8bit"], device), config["lora"])
        training = bench_training(config["training"], batch, n, device)
        shapes = {
            "input_features": ((80, 3000), torch.float32, None),
            "labels": ((LABEL_LENGTH,), torch.long, ARCHS[arch]["vocab_size"] - 1000),
        }
        trainer = build_trainer(model, training, Path(folder) / "out", RandomTokens(batch * n, shapes), None)
        return train_steps(trainer, device)

    return Bench(
        what=f"whisper-large-v2 architecture ({arch}), random weights, int8 + LoRA r={config['lora']['r']}, "
        f"{'fp16' if device == 'cuda' else 'fp32'}, Seq2SeqTrainer, labels of {LABEL_LENGTH} tokens",
        setting="per_device_train_batch_size",
        default_batch=config["training"]["per_device_train_batch_size"],
        tokens_per_sample=LABEL_LENGTH,
        flops_per_token=None,
        flops_note="not reported: the encoder's fixed 1500-frame pass dominates, not the label tokens",
        step=step,
    )


if __name__ == "__main__":
    main("whisper-lora", make)
