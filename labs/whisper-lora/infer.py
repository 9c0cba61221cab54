"""Transcribe your own recordings with a fine-tuned adapter (course chapter 7, "模型推理").

Loads the base Whisper named in the run's ``adapter/adapter_config.json`` (int8, as in training)
once, puts the LoRA adapter on it with ``PeftModel.from_pretrained`` and transcribes every file
with the ASR pipeline:

    python labs/whisper-lora/infer.py --run outputs/whisper-lora/full/latest clip1.mp3 talk.flac ...

Recordings of any length: the pipeline cuts audio longer than Whisper's 30-second window into
30-second chunks with ``--stride-s`` seconds of overlap on each side and merges the texts
(``chunk_length_s``, Transformers' chunked long-form ASR); ``--timestamps`` adds segment times.
Formats: what libsndfile reads (WAV, FLAC, OGG/Opus, MP3, ...; ``labkit.lab.audio``).

Output: for each file a line ``path<TAB>transcript``; before it, on stderr, the decoded rate and
duration. A file that is missing or is not audio is reported and skipped; the others are still
transcribed, and the exit status is 1 if any file failed (2 for a bad run folder).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

from labkit.errors import LabError  # noqa: E402

#: Whisper's input window in seconds (Radford et al. 2022, sec. 2.2: 30-second segments).
WINDOW_S = 30.0


def base_model_path(run_dir: Path, recorded: str) -> str:
    """The adapter's base model; for smoke runs the run's own ``tiny-model/`` (its recorded absolute
    path may be a container path)."""
    if Path(recorded).is_absolute() and not Path(recorded).exists() and (run_dir / "tiny-model").is_dir():
        return str(run_dir / "tiny-model")
    return recorded


class Transcriber:
    """A run's adapter on its base model, loaded once, and the ASR pipeline over it.

    Args:
        run_dir: a finished run directory (holds ``adapter/``).
        device: ``auto``, ``cuda``, ``npu`` or ``cpu``.
        language, task: Whisper's generation settings (the course: ``chinese``, ``transcribe``).

    Raises:
        LabError: the run has no adapter, or the device is unavailable.
    """

    def __init__(self, run_dir: Path, device: str = "auto", language: str = "chinese", task: str = "transcribe"):
        from peft import PeftConfig, PeftModel
        from transformers import AutomaticSpeechRecognitionPipeline, WhisperProcessor

        from labkit.lab.device import select_device

        from train import load_base_model

        adapter_dir = Path(run_dir) / "adapter"
        if not (adapter_dir / "adapter_config.json").is_file():
            raise LabError(f"{adapter_dir} holds no adapter_config.json: give --run a finished run directory")
        config = PeftConfig.from_pretrained(adapter_dir)
        self.device = select_device(device)
        base = load_base_model(base_model_path(Path(run_dir), config.base_model_name_or_path), True, self.device)
        model = PeftModel.from_pretrained(base, adapter_dir)
        model.eval()
        processor = WhisperProcessor.from_pretrained(adapter_dir)
        tok = processor.tokenizer
        # Whisper's released tokenizers hold 1,501 timestamp tokens <|0.00|> ... <|30.00|>; the smoke
        # run's tiny tokenizer holds none (labkit.lab.tiny), so it cannot produce segment times.
        self.has_timestamps = tok.convert_tokens_to_ids("<|0.00|>") not in (None, tok.unk_token_id)
        self.generate_kwargs = {"language": language, "task": task}
        self.pipeline = AutomaticSpeechRecognitionPipeline(
            model=model, tokenizer=processor.tokenizer, feature_extractor=processor.feature_extractor
        )

    def __call__(self, clip, max_new_tokens: int = 128, stride_s: float = 5.0, timestamps: bool = False) -> dict:
        """Transcribe one decoded clip (``labkit.lab.audio.Decoded`` at 16 kHz).

        Returns:
            The pipeline's output: ``{"text": str}``, plus ``"chunks": [{"timestamp": (start_s,
            end_s), "text": str}, ...]`` with ``timestamps``.
        """
        if timestamps and not self.has_timestamps:
            raise LabError(
                "--timestamps: this model's tokenizer has no timestamp tokens (<|0.00|> ...); the smoke "
                "run's tiny Whisper cannot give segment times, a real Whisper checkpoint can"
            )
        long = clip.duration_s > WINDOW_S
        kwargs = {"chunk_length_s": WINDOW_S, "stride_length_s": stride_s} if long else {}
        return self.pipeline(
            {"raw": clip.array, "sampling_rate": clip.sampling_rate},
            generate_kwargs={**self.generate_kwargs, "max_new_tokens": max_new_tokens},
            return_timestamps=timestamps,
            **kwargs,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Transcribe audio files (any length) with a fine-tuned Whisper adapter.",
        epilog="Exit status: 0 all files transcribed, 1 some file failed (listed at the end), 2 bad --run or device.",
    )
    parser.add_argument(
        "--run", type=Path, required=True, help="a run directory, e.g. outputs/whisper-lora/full/latest"
    )
    parser.add_argument("--device", default="auto", help="auto, cuda, npu or cpu")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="per 30-second window")
    parser.add_argument("--stride-s", type=float, default=5.0, help="overlap between windows of long recordings (s)")
    parser.add_argument("--timestamps", action="store_true", help="print segment start/end times")
    parser.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args(argv)

    from labkit.lab.audio import WHISPER_RATE, decode

    t0 = time.monotonic()
    try:
        transcriber = Transcriber(args.run.resolve(), args.device)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model loaded in {time.monotonic() - t0:.1f} s on {transcriber.device}", file=sys.stderr, flush=True)
    failures = []
    for path in args.files:
        try:
            clip = decode(path, WHISPER_RATE)
        except LabError as exc:
            failures.append((path, str(exc)))
            print(f"skipped: {exc}", file=sys.stderr, flush=True)
            continue
        t1 = time.monotonic()
        try:
            out = transcriber(clip, args.max_new_tokens, args.stride_s, args.timestamps)
        except LabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # the model failed on this file (out of memory, ...): report it, go on
            failures.append((path, f"transcription failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"))
            print(f"skipped: {path}: {failures[-1][1]}", file=sys.stderr, flush=True)
            continue
        print(
            f"{path}: {clip.source_rate} Hz, {clip.duration_s:.1f} s, transcribed in {time.monotonic() - t1:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        print(f"{path}\t{out['text'].strip()}", flush=True)
        for chunk in out.get("chunks", []) if args.timestamps else []:
            start, end = chunk["timestamp"]
            print(
                f"  [{start or 0:7.2f} -> {end if end is not None else clip.duration_s:7.2f}] {chunk['text'].strip()}"
            )
    if failures:
        print(f"{len(failures)} of {len(args.files)} file(s) failed:", file=sys.stderr)
        for path, why in failures:
            print(f"  {path}: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
