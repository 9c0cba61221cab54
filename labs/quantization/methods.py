"""GPTQ, AWQ and bitsandbytes, the three methods of course chapter 8, on either library stack.

``variant: maintained`` (requirements.txt): Transformers 5 + Optimum 2 + GPTQModel + bitsandbytes 0.50.
``variant: course`` (requirements-course.txt): the course's libraries, Transformers 4.40 + Optimum 1.20
+ auto-gptq 0.7.1 + AutoAWQ 0.2.5 + bitsandbytes 0.43, on torch 2.2.

GPTQ goes through Transformers' ``GPTQConfig`` in both (quantized inside ``from_pretrained`` by Optimum,
with auto-gptq or GPTQModel underneath), as in the course notebook ``AutoGPTQ_opt-2.7b.ipynb``.
AWQ uses AutoAWQ in the course variant (``AWQ_opt-2.7b.ipynb``) and GPTQModel in the maintained one;
both write a ``quantization_config`` that plain ``AutoModelForCausalLM.from_pretrained`` loads.
bitsandbytes quantizes while loading (``BitsAndBytesConfig``, ``bits_and_bytes.ipynb``).
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GPTQConfig

from labkit.errors import LabError

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
DTYPE_KW = "dtype" if TRANSFORMERS_MAJOR >= 5 else "torch_dtype"  # renamed in Transformers 5

# What the course's pinned libraries cannot do without CUDA (each checked against that version's code).
NEEDS_CUDA = {
    ("course", "gptq"): "auto-gptq 0.7.1 quantizes on CUDA only (Optimum: 'A GPU is needed to quantize model')",
    ("course", "awq-reload"): "Transformers 4.40 loads AWQ checkpoints on CUDA only ('AWQ is only available on GPU')",
    ("course", "bnb"): "bitsandbytes 0.43 has no CPU backend (CPU support arrived in 0.46)",
}


def cuda_skip(variant: str, what: str, device: str) -> str | None:
    """Why ``what`` cannot run on ``device`` with ``variant``'s libraries (None when it can)."""
    reason = NEEDS_CUDA.get((variant, what))
    return reason if reason and device != "cuda" else None


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def load_model(path: str | Path, device: str, dtype: str, device_map: str | None = None, **kwargs):
    """``AutoModelForCausalLM.from_pretrained`` in ``dtype`` (a torch dtype name), the whole model on
    ``device`` unless ``device_map`` (e.g. ``auto``) lets Accelerate place modules."""
    return AutoModelForCausalLM.from_pretrained(
        path, device_map=device_map or {"": device}, **{DTYPE_KW: torch_dtype(dtype)}, **kwargs
    )


@contextlib.contextmanager
def output_to(log):
    """Inside, what the libraries print goes to ``log`` (the run's ``run.log``, open) instead of the console.

    GPTQModel writes its banner, environment notes, tables and progress with LogBar, and Optimum and
    AutoAWQ their progress with tqdm, straight to ``sys.stdout``/``sys.stderr`` rather than through
    Python logging, so ``labkit.lab.runner``'s log handler does not catch them: the lab prints its steps
    and numbers, the libraries' messages are in ``run.log``. GPTQModel's live progress (redrawn once a
    second while it compiles its CPU extension: thousands of lines on a slow machine) is turned off
    at its source as well (:func:`quiet_gptqmodel_progress`), so it does not fill the log either.
    """
    # Python logging (torch.utils._pytree's warning when torchao loads, Transformers' loggers) already
    # goes to run.log: labkit.lab.runner.quiet_console hands those loggers to its file handler.
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        quiet_gptqmodel_progress()
        yield


def quiet_gptqmodel_progress() -> bool:
    """Turn GPTQModel's live progress bars and spinners into no-ops; ``False`` where GPTQModel is not
    installed (the course variant).

    GPTQModel draws them through ``gptqmodel.utils.logger.setup_logger()``, which already returns a
    silent progress handle when ``_suppress_live_renderables()`` says the session is not interactive
    (GPTQModel 7.6 asks that only under pytest). A lab run is not interactive either: the function is
    made to say so. ``tests/test_lab.py`` checks that GPTQModel's progress then prints nothing.
    """
    try:
        from gptqmodel.utils import logger as gptqmodel_logger
    except ImportError:
        return False
    gptqmodel_logger._suppress_live_renderables = lambda: True
    return True


def free(device: str) -> None:
    """Collect garbage (quantizers keep reference cycles to the model) and return cached GPU memory."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def quantize_gptq(src: str, out_dir: Path, windows: list[list[int]], cfg: dict, device: str, dtype: str) -> None:
    """GPTQ (Frantar et al. 2022) through ``GPTQConfig``: quantize while loading ``src``, save to ``out_dir``.

    ``windows`` are the calibration samples (token ids); ``cfg`` holds ``bits``, ``group_size`` and
    ``desc_act`` (course: 4, 128, False). The calibration samples are dropped from the saved
    ``quantization_config`` (the course's config.json carried its texts) and described in the metrics.
    """
    tokenizer = AutoTokenizer.from_pretrained(src)
    samples = [
        {"input_ids": torch.tensor([w]), "attention_mask": torch.ones(1, len(w), dtype=torch.long)} for w in windows
    ]
    config = GPTQConfig(  # tokenized samples: Optimum uses them as given ("appears to be already tokenized")
        bits=cfg["bits"],
        group_size=cfg["group_size"],
        desc_act=cfg["desc_act"],
        dataset=samples,
        tokenizer=tokenizer,
        model_seqlen=len(windows[0]),
    )
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(out_dir):  # GPTQModel writes its per-layer log to ./logs
        model = load_model(src, device, dtype, quantization_config=config)
    model.config.quantization_config.dataset = None
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del model, samples, config
    free(device)


def quantize_awq(
    variant: str, src: str, out_dir: Path, windows: list[list[int]], cfg: dict, device: str, dtype: str
) -> None:
    """AWQ (Lin et al. 2023) of ``src`` into ``out_dir``; ``cfg``: ``bits``, ``group_size``, ``zero_point``,
    ``version`` (course: 4, 128, True, GEMM).

    Course variant: AutoAWQ's ``quantize`` + ``save_quantized``, then the course's "Transformers
    compatibility" step: ``AwqConfig`` written into config.json. Maintained variant: GPTQModel's
    ``AWQConfig`` (``sym=False`` is AWQ's zero point), which writes the same config itself.
    """
    tokenizer = AutoTokenizer.from_pretrained(src)
    if variant == "course":
        from awq import AutoAWQForCausalLM

        # AutoAWQ 0.2.5 computes in the model's dtype; PyTorch 2.2 has no fp16 LayerNorm on CPU.
        awq_dtype = torch_dtype(dtype) if device == "cuda" else torch.float32
        model = AutoAWQForCausalLM.from_pretrained(src, torch_dtype=awq_dtype, safetensors=True)
        quant_config = {
            "w_bit": cfg["bits"],
            "q_group_size": cfg["group_size"],
            "zero_point": cfg["zero_point"],
            "version": cfg["version"],
        }
        model.quantize(tokenizer, quant_config=quant_config, calib_data=windows)
        model.model.config.quantization_config = {  # = AwqConfig(...).to_dict(), which refuses to run on CPU
            "quant_method": "awq",
            "bits": cfg["bits"],
            "group_size": cfg["group_size"],
            "zero_point": cfg["zero_point"],
            "version": cfg["version"].lower(),
        }
        model.save_quantized(str(out_dir))
    else:
        from gptqmodel import BACKEND, AWQConfig, GPTQModel

        config = AWQConfig(
            bits=cfg["bits"], group_size=cfg["group_size"], sym=not cfg["zero_point"], format=cfg["version"].lower()
        )
        model = GPTQModel.load(src, config, device=device)
        samples = [{"input_ids": w, "attention_mask": [1] * len(w)} for w in windows]
        out_dir = Path(out_dir).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.chdir(out_dir):  # its per-layer log (loss, time per module) goes to ./logs
            # AWQ's GEMM packer is CUDA code; on CPU GPTQModel packs with its portable torch kernel.
            model.quantize(samples, batch_size=1, backend=BACKEND.AUTO if device == "cuda" else BACKEND.TORCH)
        model.save(str(out_dir))
    tokenizer.save_pretrained(out_dir)
    del model
    free(device)  # AutoAWQ's quantizer holds the model and the cached calibration inputs in a cycle


def bnb_config(settings: dict) -> BitsAndBytesConfig:
    """``BitsAndBytesConfig(**settings)`` with ``bnb_4bit_compute_dtype`` given by name (e.g. ``bfloat16``)."""
    settings = dict(settings)
    if "bnb_4bit_compute_dtype" in settings:
        settings["bnb_4bit_compute_dtype"] = torch_dtype(settings["bnb_4bit_compute_dtype"])
    return BitsAndBytesConfig(**settings)


def weights_format(model_dir: Path) -> str:
    """``"safetensors"`` or ``"bin"``: the weight files a saved checkpoint holds (sharded or not).

    Reloading passes ``use_safetensors`` accordingly, so a checkpoint written by a library version
    that saves ``pytorch_model.bin`` reloads as well as one that writes ``model.safetensors``.

    Raises:
        LabError: no weight files; names the folder and what it holds.
    """
    names = sorted(p.name for p in Path(model_dir).iterdir()) if Path(model_dir).is_dir() else []
    if any(n.endswith(".safetensors") for n in names):
        return "safetensors"
    if any(n.endswith(".bin") and n.startswith(("pytorch_model", "model")) for n in names):
        return "bin"
    raise LabError(
        f"{model_dir} holds no model weights (*.safetensors or pytorch_model*.bin); it has: "
        f"{', '.join(names) or 'nothing'}. Re-run the quantization step that writes it."
    )


def check_on_one_device(model, device: str, method: str) -> None:
    """Pre-flight before evaluating a GPTQ/AWQ model: every module on ``device``.

    The fast GPTQ/AWQ kernels (ExLlama, Marlin, GEMM) need every quantized module on the GPU; with
    ``device_map="auto"`` on a GPU too small, Accelerate offloads some to the CPU or disk, and the
    kernels fail late or silently fall back.

    Raises:
        LabError: names the offloaded modules and what to do.
    """
    placement = getattr(model, "hf_device_map", None) or {}
    off = [name for name, where in placement.items() if str(where) in ("cpu", "disk")]
    if device == "cuda" and method in ("gptq", "awq") and off:
        raise LabError(
            f"{method.upper()} kernels need every module on the GPU, but {len(off)} module(s) were placed on "
            f"CPU/disk ({', '.join(off[:3])}{', ...' if len(off) > 3 else ''}). Free GPU memory, use a GPU "
            "with more memory, or quantize a smaller model (model.name_or_path=facebook/opt-125m)."
        )
