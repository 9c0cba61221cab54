"""Steps 2-3, model and training (course chapter 7, "模型准备" and "模型训练").

Load Whisper in 8-bit through ``BitsAndBytesConfig``, prepare it for k-bit training, add a LoRA
adapter on ``q_proj``/``v_proj`` and train it with ``Seq2SeqTrainer``. Only the adapter's weights
train; the int8 base stays frozen.
"""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoModelForSpeechSeq2Seq,
    BitsAndBytesConfig,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)

from labkit.lab.runner import log_once

# bitsandbytes' int8 matmul computes in fp16 and logs so on every call (the course notebook shows
# the same message). Once is enough to learn it.
log_once("bitsandbytes.autograd._functions")


def device_map_for(device: str) -> str | dict:
    """``"auto"`` on CUDA (as in the course); the whole model on one device elsewhere."""
    return "auto" if device == "cuda" else {"": device}


def load_base_model(model_name_or_path: str, load_in_8bit: bool, device: str, revision: str | None = None):
    """Whisper for conditional generation, int8 weights if ``load_in_8bit`` (bitsandbytes LLM.int8()).

    As in the course, ``forced_decoder_ids`` and ``suppress_tokens`` are cleared: language and task
    are given to ``generate`` instead.
    """
    quantization = BitsAndBytesConfig(load_in_8bit=True) if load_in_8bit else None
    model = AutoModelForSpeechSeq2Seq.from_pretrained(
        model_name_or_path, revision=revision, quantization_config=quantization, device_map=device_map_for(device)
    )
    model.config.forced_decoder_ids = None
    model.config.suppress_tokens = []
    return model


def add_lora(model, lora: dict) -> PeftModel:
    """``prepare_model_for_kbit_training`` then ``get_peft_model`` with ``LoraConfig(**lora)``.

    ``lora`` holds PEFT's own names: ``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``,
    ``bias``. Trainable parameters: ``r * (d_in + d_out)`` per targeted linear layer.
    """
    # Casts the non-int8 layers to fp32 and turns on gradient checkpointing (non-reentrant, the
    # variant PyTorch recommends) so activations are recomputed instead of stored.
    model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(model, LoraConfig(**lora))


def build_trainer(
    model,
    training: dict,
    output_dir: Path,
    train_dataset,
    eval_dataset,
    collator=None,
    feature_extractor=None,
    callbacks=None,
) -> Seq2SeqTrainer:
    """``Seq2SeqTrainer`` with ``Seq2SeqTrainingArguments(**training)``; checkpoints go under ``output_dir``.

    As in the course, the feature extractor is the trainer's processing class (saved with checkpoints).
    """
    args = Seq2SeqTrainingArguments(output_dir=str(output_dir), **training)
    model.config.use_cache = False  # incompatible with gradient checkpointing while training
    return Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=feature_extractor,
        callbacks=callbacks,
    )
