"""Steps 4-5, inference and evaluation (course chapter 7, "模型推理").

Transcribe with the automatic-speech-recognition ``pipeline`` and score with the character error
rate (CER, via jiwer), the usual metric for Mandarin ASR, before and after fine-tuning.
"""

from __future__ import annotations

import jiwer
from transformers import AutomaticSpeechRecognitionPipeline, WhisperTokenizer


def normalize(text: str) -> str:
    """Whisper's basic normalizer (punctuation and symbols removed, lower case), then no spaces.

    Chinese is written without spaces, so CER compares character strings.
    """
    return "".join(WhisperTokenizer.basic_normalize(text).split())


def transcribe(model, processor, audio: list, generate_kwargs: dict, batch_size: int = 8) -> list[str]:
    """Transcripts of decoded clips (``labkit.lab.audio.Decoded``) with the ASR pipeline."""
    asr = AutomaticSpeechRecognitionPipeline(
        model=model, tokenizer=processor.tokenizer, feature_extractor=processor.feature_extractor
    )
    inputs = [{"raw": a.array, "sampling_rate": a.sampling_rate} for a in audio]
    return [out["text"] for out in asr(inputs, batch_size=batch_size, generate_kwargs=generate_kwargs)]


def cer(references: list[str], hypotheses: list[str]) -> float:
    """Character error rate of normalized texts: (substitutions + deletions + insertions) / reference characters.

    Can exceed 1.0 when the hypothesis inserts many characters (a random model does).
    """
    return float(jiwer.cer([normalize(r) for r in references], [normalize(h) for h in hypotheses]))
