"""Transcribe audio files with a fine-tuned adapter (course chapter 7, "模型推理").

Loads the base Whisper named in the run's ``adapter/adapter_config.json`` in int8, puts the LoRA
adapter on it with ``PeftModel.from_pretrained`` and transcribes with the ASR pipeline:

    python labs/whisper-lora/infer.py --run outputs/whisper-lora/full/latest clip1.mp3 clip2.wav

Prints one ``path<TAB>transcript`` line per file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datasets import Audio, Dataset
from peft import PeftConfig, PeftModel
from transformers import WhisperProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

from data import require_audio_decoder  # noqa: E402
from evaluate_asr import transcribe  # noqa: E402
from train import load_base_model  # noqa: E402

from labkit import LabError  # noqa: E402
from labkit.device import select_device  # noqa: E402


def base_model_path(run_dir: Path, adapter: PeftConfig) -> str:
    """The adapter's base model; for smoke runs the run's own ``tiny-model/`` (its recorded absolute
    path may be a container path)."""
    recorded = adapter.base_model_name_or_path
    if Path(recorded).is_absolute() and not Path(recorded).exists() and (run_dir / "tiny-model").is_dir():
        return str(run_dir / "tiny-model")
    return recorded


def transcribe_files(run_dir: Path, files: list[Path], device: str = "auto", max_new_tokens: int = 128) -> list[str]:
    """Transcripts of ``files`` (any format FFmpeg reads) with the adapter saved in ``run_dir``.

    Raises:
        LabError: the run has no adapter, or an audio file is missing or unreadable (names it).
    """
    require_audio_decoder()
    adapter_dir = Path(run_dir) / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise LabError(f"{adapter_dir} holds no adapter_config.json: give --run a finished run directory")
    for path in files:
        if not Path(path).is_file():
            raise LabError(f"audio file {path} not found")
    config = PeftConfig.from_pretrained(adapter_dir)
    device = select_device(device)
    base = load_base_model(base_model_path(Path(run_dir), config), True, device)
    model = PeftModel.from_pretrained(base, adapter_dir)
    processor = WhisperProcessor.from_pretrained(adapter_dir)
    # Decode and resample to 16 kHz the way training did: datasets' Audio feature.
    clips = Dataset.from_dict({"audio": [str(p) for p in files]}).cast_column("audio", Audio(sampling_rate=16000))
    audio = []
    for i, path in enumerate(files):
        try:
            decoded = clips[i]["audio"]
            audio.append({"array": decoded["array"], "sampling_rate": decoded["sampling_rate"]})
        except Exception as exc:  # decoder errors come in many types
            raise LabError(f"cannot decode audio file {path}: {exc}") from exc
    kwargs = {"language": "chinese", "task": "transcribe", "max_new_tokens": max_new_tokens}
    return transcribe(model, processor, audio, kwargs, batch_size=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Transcribe audio files with a fine-tuned Whisper adapter.")
    parser.add_argument(
        "--run", type=Path, required=True, help="a run directory, e.g. outputs/whisper-lora/full/latest"
    )
    parser.add_argument("--device", default="auto", help="auto, cuda, npu or cpu")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        texts = transcribe_files(args.run.resolve(), args.files, args.device, args.max_new_tokens)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, text in zip(args.files, texts):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
