"""Tests of the adapters variant (AdapterHub adapters 1.3.0, Transformers 4.57.6), run in that variant's
environment (``.venvs/peft-methods-adapters``; tests/test_lab.py starts them there). In the default
environment, which has no ``adapters``, they are skipped."""

from __future__ import annotations

import pytest
import torch

adapters = pytest.importorskip("adapters")

from labkit.config import REPO_ROOT, get_lab, load_profile  # noqa: E402
from labkit.errors import LabError  # noqa: E402
from labkit.verify import format_table, load_expected, verify_run  # noqa: E402

from methods import parameter_places  # noqa: E402
from run import attach  # noqa: E402

LAB = get_lab("peft-methods")


def test_unipelt_on_a_model_adapters_cannot_prefix_tune_is_refused():
    """ModernBERT: adapters 1.3.0 adds bottleneck adapters to it but has no prefix tuning for it."""
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    config = ModernBertConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, num_labels=2,
    )  # fmt: skip
    method = load_profile(LAB, "adapters-smoke")[0]["methods"]["unipelt"]
    with pytest.raises(LabError) as err:
        attach("unipelt", method, ModernBertForSequenceClassification(config), {}, False)
    message = str(err.value)
    assert message.startswith("method unipelt: adapters 1.3.0 does not support UniPELTConfig on model type modernbert")
    assert "it supports there: bottleneck adapters" in message and "prefix tuning" not in message.split("(")[1]
    assert "only=[...]" in message
    houlsby = load_profile(LAB, "adapters-smoke")[0]["methods"]["houlsby"]
    attach("houlsby", houlsby, ModernBertForSequenceClassification(config), {}, False)  # this one it supports


@pytest.mark.parametrize("name", ["houlsby", "unipelt"])
def test_full_profile_parameter_counts_match_expected(name):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, num_labels=2
    )
    method = load_profile(LAB, "adapters-full")[0]["methods"][name]
    with torch.device("meta"):
        model = attach(name, method, RobertaForSequenceClassification(config), {}, False)
    expected = load_expected(LAB.expected_path("adapters-full"))["metrics"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected[f"methods.{name}.params.trainable"]["equals"]
    places = parameter_places(model)
    assert trainable - places["head"] == expected[f"methods.{name}.params.without_head"]["equals"]
    if name == "houlsby":  # two bottlenecks 768 -> 48 -> 768 per layer, 12 layers
        assert places == {"head": 592_130, "attention": 12 * (768 * 48 + 48 + 48 * 768 + 768)} | {
            "feed-forward": 12 * (768 * 48 + 48 + 48 * 768 + 768)
        }


def test_adapters_smoke_runs_natively_and_verifies(tmp_path):
    """The variant's smoke profile in its own environment: every check of expected/adapters-smoke.yaml
    passes (none skipped), the same tiny base as the default variant's, byte for byte."""
    import run

    assert run.main("peft-methods", run.run, ["--profile", "adapters-smoke", "--output-root", str(tmp_path)]) == 0
    run_dir = (tmp_path / "peft-methods" / "adapters-smoke" / "latest").resolve()
    checks = verify_run(run_dir, LAB.expected_path("adapters-smoke"))
    print(format_table(checks))
    assert all(c.passed and not c.skipped for c in checks), [c for c in checks if not c.passed or c.skipped]
    smoke = load_expected(LAB.expected_path("smoke"))["metrics"]["model.tiny_weights_sha256"]["equals"]
    assert (run_dir / "metrics.json").read_text().count(smoke) == 1
    assert (REPO_ROOT / "labs" / "peft-methods" / "Dockerfile.adapters").is_file()
