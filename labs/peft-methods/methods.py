"""The methods the lab compares, what each needs, what each refuses, and where its parameters sit.

Every method is an entry of the profile's ``methods`` mapping: ``{kind, learning_rate, config}``
(plus ``quantization`` for QLoRA). ``kind`` picks the library call (``run.py`` step 3); ``config``
holds that call's arguments as named by the library. The kinds:

=================  =========================================  ============================================
kind               library call                               paper
=================  =========================================  ============================================
``full``           every weight trains (the reference)        Devlin et al. 2019; Liu et al. 2019
``lora``           ``peft.LoraConfig`` (``use_dora``: DoRA)   Hu et al. 2021; Liu et al. 2024 (DoRA)
``qlora``          ``LoraConfig`` on a 4-bit NF4 base         Dettmers et al. 2023
``adalora``        ``peft.AdaLoraConfig``                     Zhang et al. 2023
``ia3``            ``peft.IA3Config``                         Liu et al. 2022 ((IA)^3, T-Few)
``prefix_tuning``  ``peft.PrefixTuningConfig``                Li & Liang 2021; Liu et al. 2022 (P-Tuning v2)
``prompt_tuning``  ``peft.PromptTuningConfig``                Lester et al. 2021
``p_tuning``       ``peft.PromptEncoderConfig``               Liu et al. 2021 (P-Tuning v1, "GPT Understands, Too")
``houlsby``        ``adapters.DoubleSeqBnConfig``             Houlsby et al. 2019
``unipelt``        ``adapters.UniPELTConfig``                 Mao et al. 2022
=================  =========================================  ============================================

PEFT has neither Houlsby adapters nor UniPELT; AdapterHub's ``adapters`` has both but pins an older
Transformers (1.3.0: ``transformers~=4.57.6``), so those two kinds run in the lab's ``adapters``
variant (its own lock, image and native environment), with the same data, base, budget, metric and
output format. ``full`` runs in both environments (the reference, and a check the two agree).

This module imports neither torch nor the libraries at import time: its checks run before anything
loads.
"""

from __future__ import annotations

import difflib
import inspect
import re
from pathlib import Path

from labkit.errors import LabError

#: kind -> the library that trains it.
KINDS = {
    "full": "transformers",
    "lora": "peft",
    "qlora": "peft",
    "adalora": "peft",
    "ia3": "peft",
    "prefix_tuning": "peft",
    "prompt_tuning": "peft",
    "p_tuning": "peft",
    "houlsby": "adapters",
    "unipelt": "adapters",
}
#: The libraries each environment has: the lab's own (variant ``None``) and the ``adapters`` variant's.
VARIANT_LIBRARIES = {None: ("transformers", "peft"), "adapters": ("transformers", "adapters")}
#: Kinds that put virtual tokens in front of the input (prompt) or of every layer's keys and values
#: (prefix): RoBERTa numbers them as positions too (see :func:`usable_positions`).
VIRTUAL_TOKEN_KINDS = ("prefix_tuning", "prompt_tuning", "p_tuning")
#: Kinds whose ``config.target_modules`` name Linear layers (``feedforward_modules`` too for (IA)^3).
TARGETED_KINDS = ("lora", "qlora", "adalora", "ia3")
#: Model types whose position ids start after the padding id (``RobertaEmbeddings``: positions
#: ``padding_idx + 1 ...``), so ``max_position_embeddings - padding_idx - 1`` tokens fit (roberta-base:
#: 514 - 2 = 512).
PADDING_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "data2vec-text", "longformer", "roberta-prelayernorm")


def closest(word: str, choices) -> str:
    """`` Did you mean X?`` for the nearest of ``choices`` (difflib), or ``""``."""
    near = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {near[0]}?" if near else ""


def variant_of(library: str) -> str:
    """How to run a method of ``library``: ``VARIANT=adapters`` or the default environment."""
    return (
        "VARIANT=adapters (make lab-peft-methods VARIANT=adapters)" if library == "adapters" else "the default variant"
    )


def selected_methods(cfg: dict, variant: str | None = None) -> list[str]:
    """The method names this run trains, in the profile's order: ``only`` (a subset), or every method
    this environment's libraries train (:data:`VARIANT_LIBRARIES`).

    Raises:
        LabError: a name in ``only`` that is not a method of the profile (suggests the closest and
            lists them), a method whose ``kind`` is unknown (suggests the closest), or a method of the
            other environment (names the variant that runs it).
    """
    methods = cfg["methods"]
    for name, method in methods.items():
        if method["kind"] not in KINDS:
            raise LabError(
                f"methods.{name}.kind={method['kind']!r} is not a method kind this lab runs."
                f"{closest(method['kind'], KINDS)} "
                f"Kinds: {', '.join(KINDS)}"
            )
    libraries = VARIANT_LIBRARIES[variant]
    if cfg["only"] is None:
        return [name for name, method in methods.items() if KINDS[method["kind"]] in libraries]
    chosen = [cfg["only"]] if isinstance(cfg["only"], str) else list(cfg["only"])
    for name in chosen:
        if name not in methods:
            raise LabError(
                f"only=[...] names {name!r}, which is not a method of this profile.{closest(name, methods)} "
                f"Methods: {', '.join(methods)}"
            )
        library = KINDS[methods[name]["kind"]]
        if library not in libraries:
            raise LabError(
                f"method {name} is trained with {library}, which this environment "
                f"({'adapters variant' if variant else 'default variant'}) does not have: "
                f"run it with {variant_of(library)}"
            )
    if not chosen:
        raise LabError("only=[] selects no method: name at least one, or only=null for all")
    return [name for name in methods if name in chosen]


def check_settings(cfg: dict, names: list[str]) -> None:
    """Step 0: the settings a run can refuse before any data or weights load, one line each.

    Raises:
        LabError: ``learning_rate_scale`` < 0 or a method's ``learning_rate`` < 0; AdaLoRA without
            ``total_step`` or with one other than ``training.max_steps`` (its schedule would end
            elsewhere than the training); prefix tuning with gradient checkpointing (PEFT refuses it:
            its prefix is a key/value cache, which gradient checkpointing cannot use:
            huggingface/peft#2191, #869); ``training.max_steps`` not positive (the one budget every
            method shares is a number of optimizer steps).
    """
    training = cfg["training"]
    if not isinstance(training["max_steps"], int) or training["max_steps"] <= 0:
        raise LabError(
            f"training.max_steps={training['max_steps']!r}: every method trains the same number of optimizer "
            "steps; give a positive number"
        )
    if cfg["learning_rate_scale"] < 0:
        raise LabError(f"learning_rate_scale={cfg['learning_rate_scale']}: give a number >= 0 (1 keeps the profile's)")
    for name in names:
        method = cfg["methods"][name]
        kind, settings = method["kind"], method["config"]
        if method["learning_rate"] < 0:
            raise LabError(f"methods.{name}.learning_rate={method['learning_rate']}: give a number >= 0")
        if kind == "adalora":
            steps = training["max_steps"]
            if settings.get("total_step") is None:
                raise LabError(
                    f"methods.{name}.config.total_step is not set: AdaLoRA schedules its rank budget over the "
                    f"training's optimizer steps and PEFT needs their number; this run takes {steps}: "
                    f"SET=methods.{name}.config.total_step={steps}"
                )
            if settings["total_step"] != steps:
                raise LabError(
                    f"methods.{name}.config.total_step={settings['total_step']} but training.max_steps={steps}: "
                    "AdaLoRA's budget schedule must end with the training: "
                    f"SET=methods.{name}.config.total_step={steps}"
                )
            if not settings["tinit"] < settings["total_step"] - settings["tfinal"]:
                raise LabError(
                    f"methods.{name}.config: tinit ({settings['tinit']}) must be below total_step - tfinal "
                    f"({settings['total_step']} - {settings['tfinal']}): AdaLoRA prunes ranks between those steps"
                )
        if kind == "prefix_tuning" and training.get("gradient_checkpointing"):
            raise LabError(
                f"method {name} (prefix tuning) with training.gradient_checkpointing=true: PEFT passes the prefix "
                "as a key/value cache, which gradient checkpointing cannot use (PEFT refuses it: "
                "huggingface/peft#2191). SET=gradient_checkpointing=false, or leave the method out with only=[...]"
            )


def usable_positions(config) -> int:
    """Tokens one sequence may hold in a model with ``config`` (a Transformers config): its
    ``max_position_embeddings``, less ``pad_token_id + 1`` for RoBERTa-style embeddings
    (:data:`PADDING_OFFSET_TYPES`), whose positions start after the padding id."""
    limit = int(config.max_position_embeddings)
    if config.model_type in PADDING_OFFSET_TYPES:
        limit -= int(config.pad_token_id) + 1
    return limit


def check_positions(cfg: dict, names: list[str], config) -> None:
    """Virtual tokens + ``max_length`` must fit the model's positions.

    Prompt tuning and P-Tuning put ``num_virtual_tokens`` embeddings before the input; prefix tuning
    passes them as a key/value cache of that length, and RoBERTa numbers the input's positions after
    the cache (``RobertaEmbeddings``: ``cache_length`` offset). Either way the position table must hold
    ``num_virtual_tokens + max_length``; past it the embedding lookup fails mid-training.

    Raises:
        LabError: naming the method, the sum and the model's limit.
    """
    limit = usable_positions(config)
    if cfg["max_length"] > limit:
        raise LabError(
            f"max_length={cfg['max_length']} exceeds {config.model_type}'s {limit} positions: lower max_length"
        )
    for name in names:
        method = cfg["methods"][name]
        if method["kind"] in VIRTUAL_TOKEN_KINDS:
            virtual = method["config"]["num_virtual_tokens"]
            if virtual + cfg["max_length"] > limit:
                raise LabError(
                    f"methods.{name}.config.num_virtual_tokens={virtual} + max_length={cfg['max_length']} = "
                    f"{virtual + cfg['max_length']} tokens, past {config.model_type}'s {limit} positions "
                    f"(max_position_embeddings {config.max_position_embeddings}): lower num_virtual_tokens to at most "
                    f"{limit - cfg['max_length']} or max_length to at most {limit - virtual}"
                )


def layer_names(names: list[str]) -> list[str]:
    """Module names with their layer index and what precedes it cut off (``roberta.encoder.layer.3.
    attention.self.query`` -> ``attention.self.query``), unique, in first-seen order."""
    return list(dict.fromkeys(re.sub(r"^.*?\.\d+\.", "", name) for name in names))


def target_matches(target, name: str) -> bool:
    """PEFT's rule (``check_target_module_exists``): a string is a regular expression the whole name
    must match; a list entry matches a name equal to it or ending in ``.<entry>``."""
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in target)


def check_targets(cfg: dict, names: list[str], linear_names: list[str], model_type: str) -> None:
    """Every ``target_modules`` entry (and (IA)^3's ``feedforward_modules``) must match a Linear layer.

    Raises:
        LabError: naming the method, the entries that match nothing and the model's Linear layers.
    """
    for name in names:
        method = cfg["methods"][name]
        if method["kind"] not in TARGETED_KINDS:
            continue
        for key in ("target_modules", "feedforward_modules"):
            target = method["config"].get(key)
            if target is None:
                continue
            if isinstance(target, str):  # a regular expression
                dead = [] if any(target_matches(target, n) for n in linear_names) else [target]
            else:
                dead = [t for t in target if not any(target_matches([t], n) for n in linear_names)]
            if dead:
                raise LabError(
                    f"methods.{name}.config.{key}: {', '.join(map(str, dead))} match(es) no Linear layer of this "
                    f"{model_type}. Its Linear layers: {', '.join(layer_names(linear_names))}"
                )
        settings = method["config"]
        if method["kind"] == "ia3" and settings.get("feedforward_modules"):
            outside = [f for f in settings["feedforward_modules"] if f not in settings["target_modules"]]
            if outside:
                raise LabError(
                    f"methods.{name}.config.feedforward_modules {', '.join(outside)} must also be in target_modules "
                    "((IA)^3 scales the input of the feed-forward layers it targets)"
                )


def check_adapters_support(name: str, model, adapter_config) -> None:
    """The ``adapters`` library must support ``adapter_config`` on ``model`` (after ``adapters.init``).

    Raises:
        LabError: naming the method, the model type and what the library supports on it.
    """
    if not model.supports_adapter(adapter_config):
        from importlib.metadata import version

        checks = {
            "bottleneck adapters": "bottleneck",
            "LoRA": "lora",
            "prefix tuning": "prefix_tuning",
            "prompt tuning": "prompt_tuning",
        }
        there = [label for label, kind in checks.items() if model.supports_adapter(kind)]
        raise LabError(
            f"method {name}: adapters {version('adapters')} does not support {type(adapter_config).__name__} on "
            f"model type {model.config.model_type} (it supports there: {', '.join(there) or 'none of its methods'}). "
            "Use a model the library covers for every part of it (roberta, bert, distilbert, ...; "
            "https://docs.adapterhub.ml/model_overview.html) or leave the method out with only=[...]"
        )


#: Where a trainable parameter sits, tested in this order on its name: (place, pattern).
PLACES = (
    ("head", r"(^|\.)(classifier|score|lm_head|heads)\."),
    ("virtual tokens", r"prompt_encoder|prefix_tuning|prompt_tuning|prefix_"),
    ("layer norm", r"LayerNorm|layer_norm"),
    ("attention", r"\.attention\."),
    ("feed-forward", r"\.(intermediate|output)\."),
    ("embeddings", r"embeddings\."),
)


def place_of(name: str) -> str:
    """The block a parameter called ``name`` belongs to (:data:`PLACES`), else ``other``."""
    return next((place for place, pattern in PLACES if re.search(pattern, name)), "other")


def parameter_places(model) -> dict[str, int]:
    """Trainable parameters by place (:func:`place_of`), places with none left out, in
    :data:`PLACES` order: the README's table of where each method's parameters sit."""
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            counts[place_of(name)] = counts.get(place_of(name), 0) + param.numel()
    order = [p for p, _ in PLACES] + ["other"]
    return {place: counts[place] for place in order if place in counts}


#: Weight files (``labkit.rundir.WEIGHT_SUFFIXES``): PEFT's ``adapter_model.safetensors``, the full
#: model's ``model.safetensors``, adapters' ``pytorch_adapter.bin`` and ``pytorch_model_head.bin``.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weights_bytes(path: Path) -> int:
    """Bytes of the weight files under ``path``: an adapter's size on disk. Its JSON configs are left
    out: they name the base model's path, so their size changes with where the run is."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def accept_past_key_values(model) -> bool:
    """Let PEFT's prefix tuning find ``past_key_values`` on the backbone of ``model`` (a ``*ForSequence
    Classification``); returns whether it had to.

    PEFT 0.21.2 passes the prefix to an encoder's backbone (``model.roberta``) as a key/value cache and
    first checks that the backbone's ``forward`` signature has a ``past_key_values`` parameter. Since
    Transformers 5 the encoders call it ``cache`` (``past_key_values`` still works as a keyword until
    5.40, through ``deprecate_kwarg``), so PEFT refuses: "Model does not support past key values which
    are required for prefix tuning". The cache itself still works (``RobertaSelfAttention`` concatenates
    it to the keys and values; ``RobertaEmbeddings`` numbers positions after it). This gives the
    backbone a ``forward`` that names ``past_key_values`` and hands it on as ``cache``; a backbone that
    already names it (Transformers 4.57, the adapters variant) is left alone.
    """
    backbone = getattr(model, model.base_model_prefix)
    original = backbone.forward
    parameters = inspect.signature(original).parameters
    if "past_key_values" in parameters or "cache" not in parameters:
        return False

    def forward(*args, past_key_values=None, **kwargs):
        return original(*args, cache=past_key_values, **kwargs)

    keyword = inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None)
    kept = [p for p in parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    rest = [p for p in parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    forward.__signature__ = inspect.Signature([*kept, keyword, *rest])
    backbone.forward = forward
    return True
