"""Unit tests of the peft-methods lab, run in its default environment (Transformers 5, PEFT): data,
the tiny RoBERTa, every refusal before training, parameter counts at full size, where parameters
sit, the comparison table and its merge, and the adapters variant's tests in that variant's own
environment."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labkit.config import REPO_ROOT, get_lab, load_profile
from labkit.errors import LabError
from labkit.verify import load_expected, verify_run

from comparison import completed_runs, merge_other, rows_of, write
from data import Encoded, data_fingerprint, load_splits, read_rows, to_split
from methods import (
    accept_past_key_values,
    check_positions,
    check_settings,
    check_targets,
    layer_names,
    parameter_places,
    place_of,
    selected_methods,
    usable_positions,
)

LAB = get_lab("peft-methods")


def smoke(**changes) -> dict:
    cfg = load_profile(LAB, "smoke")[0]
    cfg.update(changes)
    return cfg


def roberta_config(**kwargs):
    """roberta-base's config.json (vocabulary 50,265, 514 positions, padding id 1) with a 2-class head."""
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=50265,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=2,
        **kwargs,
    )


# --- data ---------------------------------------------------------------------------------------


def test_bundled_labels_are_names_mapped_to_ids_and_balanced():
    splits = load_splits(smoke()["data"], REPO_ROOT)
    raw = [json.loads(line) for line in (LAB.dir / "data/smoke/train.jsonl").read_text().splitlines()]
    assert [["negative", "positive"][i] for i in splits["train"].label] == [r["label"] for r in raw]
    assert (len(splits["train"]), len(splits["test"])) == (320, 80)
    assert sum(splits["train"].label) == 160 and sum(splits["test"].label) == 40


def test_foreign_csv_reads_ids_written_as_digits_and_another_text_column():
    cfg = dict(smoke()["data"], text_column="review")
    cfg["files"] = {
        "train": "labs/peft-methods/data/foreign/train.csv",
        "test": "labs/peft-methods/data/foreign/test.csv",
    }
    splits = load_splits(cfg, REPO_ROOT)
    assert (len(splits["train"]), sum(splits["train"].label)) == (60, 34)
    assert (len(splits["test"]), sum(splits["test"].label)) == (20, 12)
    assert any('"' in text for text in splits["train"].text + splits["test"].text)  # a quoted CSV field survived
    assert data_fingerprint(cfg, REPO_ROOT) != data_fingerprint(smoke()["data"], REPO_ROOT)


@pytest.mark.parametrize("profile", ["smoke", "adapters-smoke"])
def test_expected_data_fingerprint_is_the_profiles_data(profile):
    """A stale fingerprint (data changed, expected file not) would silently SKIP every data-bound check."""
    cfg = load_profile(LAB, profile)[0]["data"]
    assert data_fingerprint(cfg, REPO_ROOT) == load_expected(LAB.expected_path(profile))["data"]["fingerprint"]


def test_missing_column_unknown_label_and_bad_text_are_named(tmp_path):
    cfg = smoke()["data"]
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"text": "fine", "label": "positive"}\n', encoding="utf-8")
    with pytest.raises(LabError, match=r"lacks column\(s\) sentence; it has: text, label.*data.text_column"):
        to_split(read_rows(bad), cfg, str(bad))
    bad.write_text('{"sentence": "fine", "label": "great"}\n', encoding="utf-8")
    with pytest.raises(LabError, match=r"line 1 has label 'great'.*negative, positive.*an id 0-1"):
        to_split(read_rows(bad), cfg, str(bad))
    bad.write_text('{"sentence": "ok", "label": 1}\n{"sentence": "  ", "label": 0}\n{"sentence": null, "label": 0}\n')
    with pytest.raises(LabError, match=r"column 'sentence' is empty at line 2\. .*SET=data.bad_text=drop"):
        to_split(read_rows(bad), cfg, str(bad))
    split = to_split(read_rows(bad), dict(cfg, bad_text="drop"), str(bad))
    assert split.label == [1] and split.dropped == {"sentence": 2}


def test_csv_records_are_placed_by_record_and_line_and_other_formats_refused(tmp_path):
    cfg = dict(smoke()["data"], text_column="review")
    path = tmp_path / "t.csv"
    path.write_text('review,label\n"two\nlines",1\n,0\n', encoding="utf-8")
    with pytest.raises(LabError, match=r"column 'review' is empty at record 2 \(line 4\)"):
        to_split(read_rows(path), cfg, str(path))
    xlsx = tmp_path / "t.xlsx"
    xlsx.write_bytes(b"PK")
    with pytest.raises(
        LabError, match=r"'.xlsx' is not a format the labs read.*\.jsonl, \.json, \.csv, \.tsv, \.parquet"
    ):
        read_rows(xlsx)


def test_csv_and_tsv_go_through_the_labs_shared_reader_an_unclosed_quote_named_where_it_opened(tmp_path):
    """The shared reader (labkit.lab.files): a quote never closed is named by the record and line where it
    opened, with the fix, not the csv module's 'line 101: unexpected end of data'."""
    path = tmp_path / "train_quote.tsv"
    rows = ["sentence\tlabel", "fine\t1", "also fine\t0", '"Quoted start, never closed\t1']
    path.write_text("\n".join(rows + [f"row {i}\t0" for i in range(97)]) + "\n", encoding="utf-8")
    with pytest.raises(LabError) as err:
        read_rows(path)
    message = str(err.value)
    assert message.startswith(f"{path}: record 3 (line 4): a quote opened there is never closed: close it, or write")
    assert "end of data" not in message and "line 101" not in message
    path.write_text("sentence\tlabel\n" + "".join(f"row {i}\t{i % 2}\n" for i in range(3)), encoding="utf-8")
    assert [(r.values, r.place) for r in read_rows(path)][2] == (
        {"sentence": "row 2", "label": "0"},
        "record 3 (line 4)",
    )


def test_pairs_tokenize_as_roberta_pairs(tmp_path):
    from transformers import AutoTokenizer

    from labkit.lab.tiny import build_tiny_encoder

    tok = AutoTokenizer.from_pretrained(build_tiny_encoder(tmp_path / "m", ["a cat sat", "on the mat"], "roberta"))
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"s1": "a cat", "s2": "on the mat", "y": 1}\n', encoding="utf-8")
    cfg = dict(smoke()["data"], text_column="s1", text_pair_column="s2", label_column="y")
    row = Encoded(to_split(read_rows(path), cfg, str(path)), tok, 48)[0]
    ids = row["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and ids.count(2) == 3  # <s> A </s></s> B </s>
    assert row["labels"] == 1


# --- the tiny RoBERTa ----------------------------------------------------------------------------


def test_tiny_roberta_has_roberta_base_special_ids_and_positions(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from labkit.lab.tiny import build_tiny_encoder

    path = build_tiny_encoder(tmp_path / "m", ["The film is dull.", "A joy!"], "roberta", seed=3)
    tok, config = AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path)
    assert [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.mask_token_id == len(tok) - 1 and config.vocab_size == len(tok)
    assert config.max_position_embeddings == 514 and usable_positions(config) == 512
    assert tok.decode(tok("The film is dull.")["input_ids"], skip_special_tokens=True) == "The film is dull."
    again = build_tiny_encoder(tmp_path / "again", ["The film is dull.", "A joy!"], "roberta", seed=3)
    assert (path / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()


# --- refusals before training (each one LabError line naming the setting and what to do) ----------


def test_unknown_method_name_suggests_the_closest():
    with pytest.raises(LabError, match=r"only=\[\.\.\.\] names 'lorra'.* Did you mean lora\?.*Methods: full, lora"):
        selected_methods(smoke(only=["lorra"]))
    cfg = smoke()
    cfg["methods"]["lora"]["kind"] = "loar"
    with pytest.raises(LabError, match=r"methods.lora.kind='loar' is not a method kind.* Did you mean lora\?"):
        selected_methods(cfg)


def test_a_method_of_the_other_environment_names_its_variant():
    with pytest.raises(LabError, match=r"method houlsby is trained with adapters.*VARIANT=adapters"):
        selected_methods(smoke(only=["houlsby"]))
    with pytest.raises(LabError, match=r"method lora is trained with peft.*the default variant"):
        selected_methods(smoke(only=["lora"]), "adapters")
    assert selected_methods(smoke(), "adapters") == ["full", "houlsby", "unipelt"]
    assert len(selected_methods(smoke())) == 12


def test_target_modules_that_match_nothing_name_the_linear_layers():
    from transformers import RobertaForSequenceClassification

    with torch.device("meta"):
        model = RobertaForSequenceClassification(roberta_config())
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    cfg = smoke()
    check_targets(cfg, selected_methods(cfg), linear, "roberta")  # the profile's own targets match
    cfg["methods"]["lora"]["config"]["target_modules"] = ["q_proj", "value"]
    with pytest.raises(LabError) as err:
        check_targets(cfg, ["lora"], linear, "roberta")
    assert str(err.value) == (
        "methods.lora.config.target_modules: q_proj match(es) no Linear layer of this roberta. Its Linear layers: "
        "attention.self.query, attention.self.key, attention.self.value, attention.output.dense, "
        "intermediate.dense, output.dense, classifier.dense, classifier.out_proj"
    )
    cfg["methods"]["ia3"]["config"]["feedforward_modules"] = ["intermediate.dense"]
    with pytest.raises(LabError, match=r"feedforward_modules intermediate.dense must also be in target_modules"):
        check_targets(cfg, ["ia3"], linear, "roberta")
    cfg["methods"]["adalora"]["config"]["target_modules"] = "attn.*"  # a regular expression, as PEFT reads a string
    with pytest.raises(LabError, match=r"methods.adalora.config.target_modules: attn\.\* match"):
        check_targets(cfg, ["adalora"], linear, "roberta")
    assert layer_names(["roberta.encoder.layer.11.attention.self.query", "classifier.dense"]) == [
        "attention.self.query",
        "classifier.dense",
    ]


@pytest.mark.parametrize("name", ["prefix_tuning", "prompt_tuning_random", "p_tuning_lstm"])
def test_virtual_tokens_past_the_position_limit_are_refused(name):
    cfg = smoke(max_length=500)
    check_positions(cfg, [name], roberta_config())  # 500 + 10 <= 512
    cfg["methods"][name]["config"]["num_virtual_tokens"] = 20
    with pytest.raises(LabError) as err:
        check_positions(cfg, [name], roberta_config())
    assert str(err.value) == (
        f"methods.{name}.config.num_virtual_tokens=20 + max_length=500 = 520 tokens, past roberta's 512 positions "
        "(max_position_embeddings 514): lower num_virtual_tokens to at most 12 or max_length to at most 492"
    )
    with pytest.raises(LabError, match=r"max_length=600 exceeds roberta's 512 positions"):
        check_positions(smoke(max_length=600), [name], roberta_config())


def test_adalora_without_total_step_or_with_another_is_refused():
    cfg = smoke()
    cfg["methods"]["adalora"]["config"]["total_step"] = None
    with pytest.raises(LabError) as err:
        check_settings(cfg, ["adalora"])
    assert "total_step is not set" in str(err.value)
    assert str(err.value).endswith("this run takes 40: SET=methods.adalora.config.total_step=40")
    cfg["methods"]["adalora"]["config"]["total_step"] = 100
    with pytest.raises(LabError, match=r"total_step=100 but training.max_steps=40.*total_step=40"):
        check_settings(cfg, ["adalora"])
    cfg["methods"]["adalora"]["config"].update(total_step=40, tinit=35)
    with pytest.raises(LabError, match=r"tinit \(35\) must be below total_step - tfinal \(40 - 10\)"):
        check_settings(cfg, ["adalora"])


def test_prefix_tuning_with_gradient_checkpointing_is_refused():
    cfg = smoke()
    cfg["training"]["gradient_checkpointing"] = True
    check_settings(cfg, ["lora", "prompt_tuning_random"])  # the others may checkpoint
    for name in ("prefix_tuning", "p_tuning_v2"):
        with pytest.raises(
            LabError, match=rf"method {name} \(prefix tuning\).*huggingface/peft#2191.*gradient_checkpointing=false"
        ):
            check_settings(cfg, [name])


def test_refusals_stop_the_run_in_one_line_before_training(tmp_path, capfd):
    """Through the runner, as `make lab-peft-methods SET=...` runs: exit 2, one error line, no training."""
    import run

    code = run.main(
        "peft-methods",
        run.run,
        ["--profile", "smoke", "--output-root", str(tmp_path), "--set", "only=[lora]"]
        + ["--set", "methods.lora.config.target_modules=[qkv]"],
    )
    err = capfd.readouterr().err
    assert code == 2
    assert "error: methods.lora.config.target_modules: qkv match(es) no Linear layer" in err
    assert not list(tmp_path.rglob("methods/lora/train_log.jsonl"))


def test_a_subset_of_methods_verifies_with_the_others_skipped(tmp_path):
    """only=[ia3]: one method trains; the others' checks and files SKIP (metrics.json not_run), and
    what ia3 trained still verifies against the full run's expectations (the same seed and head)."""
    import run

    assert (
        run.main("peft-methods", run.run, ["--profile", "smoke", "--output-root", str(tmp_path), "--set", "only=[ia3]"])
        == 0
    )
    run_dir = (tmp_path / "peft-methods" / "smoke" / "latest").resolve()
    checks = {c.name: c for c in verify_run(run_dir, LAB.expected_path("smoke"))}  # labkit.verify
    assert all(c.passed for c in checks.values()), [c for c in checks.values() if not c.passed]
    assert not checks["methods.ia3.eval.metric"].skipped and not checks["methods.ia3.train.loss_after"].skipped
    assert checks["methods.lora.train.loss_drop_ratio"].skipped and checks["methods_run"].skipped
    assert checks["file methods/lora/adapter/adapter_model.safetensors"].skipped
    assert "left out with only=[ia3]" in checks["methods.lora.params.trainable"].got


def test_three_labels_verify_with_the_label_bound_counts_skipped_and_the_methods_own_counts_checked(tmp_path):
    """A sound 3-class task (your data: another label count): the head grows by one output (65 weights),
    so the counts that include it (params.trainable, adapter.weights_bytes, data.num_labels) SKIP as
    data-bound, and each method's own parameters (params.without_head) are still checked, and pass."""
    import random

    import run

    texts = {
        "routine": ["Please add a dark theme", "How do I export a report", "Update my billing address"],
        "urgent": ["The checkout is down for everyone", "Production database crashed", "Payments fail for all"],
        "spam": ["Win a free cruise now", "Cheap watches best price", "Buy followers today half off"],
    }
    rng = random.Random(3)
    for split, n in (("train", 48), ("test", 12)):
        rows = [
            {"text": f"{rng.choice(texts[lab])} (ref {rng.randint(100, 999)})", "label": lab}
            for lab in (rng.choice(list(texts)) for _ in range(n))
        ]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    sets = [f"data.files.train={tmp_path / 'train.jsonl'}", f"data.files.test={tmp_path / 'test.jsonl'}"]
    sets += ["data.text_column=text", "data.label_names=[routine,urgent,spam]", "only=[lora,prompt_tuning_random]"]
    args = ["--profile", "smoke", "--output-root", str(tmp_path / "out")]
    assert run.main("peft-methods", run.run, args + [a for s in sets for a in ("--set", s)]) == 0
    run_dir = (tmp_path / "out" / "peft-methods" / "smoke" / "latest").resolve()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["num_labels"] == 3
    assert metrics["methods"]["lora"]["params"]["by_place"]["head"] == 4290 + 65  # out_proj: 64 x 3 + 3
    checks = {c.name: c for c in verify_run(run_dir, LAB.expected_path("smoke"))}
    assert all(c.passed for c in checks.values()), [c for c in checks.values() if not c.passed]
    for method, own in (("lora", 4096), ("prompt_tuning_random", 640)):
        assert checks[f"methods.{method}.params.trainable"].skipped
        assert checks[f"methods.{method}.adapter.weights_bytes"].skipped
        check = checks[f"methods.{method}.params.without_head"]
        assert not check.skipped and check.passed and metrics["methods"][method]["params"]["without_head"] == own
    assert checks["data.num_labels"].skipped and not checks["methods.lora.train.loss_drop_ratio"].skipped


# --- what the run measures -------------------------------------------------------------------------


def test_places_of_parameters():
    assert place_of("base_model.model.classifier.modules_to_save.default.dense.weight") == "head"
    assert (
        place_of("base_model.model.roberta.encoder.layer.0.attention.self.query.lora_A.default.weight") == "attention"
    )
    assert place_of("base_model.model.roberta.encoder.layer.0.output.dense.ia3_l.default") == "feed-forward"
    assert place_of("prompt_encoder.default.embedding.weight") == "virtual tokens"
    assert place_of("roberta.encoder.layer.0.attention.self.prefix_tuning.pool.prefix_tunings.u.wte.weight") == (
        "virtual tokens"
    )
    assert place_of("roberta.encoder.layer.1.attention.output.LayerNorm.weight") == "layer norm"
    assert place_of("roberta.embeddings.word_embeddings.weight") == "embeddings"


def full_size(name: str):
    """The full profile's method ``name`` on roberta-base's architecture (meta tensors: no memory)."""
    from transformers import RobertaForSequenceClassification

    from run import attach

    method = load_profile(LAB, "full")[0]["methods"][name]
    if method["kind"] == "prompt_tuning":  # text init needs the tokenizer; the parameters are the same
        method = dict(method, config=dict(method["config"], prompt_tuning_init="RANDOM"))
    with torch.device("meta"):
        model = RobertaForSequenceClassification(roberta_config())
        return attach(name, method, model, {"path": None, "revision": None}, False)


@pytest.mark.parametrize("name", ["full", "lora", "dora", "adalora", "ia3", "p_tuning_v2", "prompt_tuning_text"])
def test_full_profile_parameter_counts_match_expected(name):
    """expected/full.yaml's counts are roberta-base's: LoRA r 8 on query/value is the LoRA paper's 0.3 M."""
    model = full_size(name)
    expected = load_expected(LAB.expected_path("full"))["metrics"]
    places = parameter_places(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected[f"methods.{name}.params.trainable"]["equals"]
    assert trainable - places.get("head", 0) == expected[f"methods.{name}.params.without_head"]["equals"]
    if name == "lora":
        assert trainable - places["head"] == 294_912  # LoRA paper Table 2, RoBERTa-base: 0.3 M
    assert expected["model.base_params"]["equals"] == 124_647_170


def test_prefix_tuning_runs_on_transformers_5_roberta(tmp_path):
    """PEFT 0.21.2 looks for ``past_key_values`` in the backbone's signature; Transformers 5 calls it
    ``cache``: without the shim get_peft_model's model refuses to run, with it the prefix is used."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from labkit.lab.tiny import build_tiny_encoder

    path = build_tiny_encoder(tmp_path / "m", ["one two three"], "roberta")
    batch = {"input_ids": torch.tensor([[0, 5, 6, 2]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    config = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=3)
    plain = get_peft_model(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2), config)
    with pytest.raises(ValueError, match="does not support past key values"):
        plain(**batch)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    assert accept_past_key_values(model) and not accept_past_key_values(model)  # once; then it is there
    with torch.no_grad():
        without = model(**batch).logits  # the shim changes nothing without a prefix
        with_prefix = get_peft_model(model, config).eval()(**batch).logits
    assert with_prefix.shape == (1, 2) and not torch.allclose(with_prefix, without)


def metrics_of(variant: str | None, fingerprint: str = "sha256:x") -> dict:
    method = {
        "kind": "full",
        "library": "transformers 5.24.0",
        "params": {"trainable": 100, "trainable_percent": 100.0, "without_head": 90, "by_place": {"head": 10}},
        "train": {"loss_drop_ratio": 0.5, "samples_per_second": 10.0, "runtime_s": 1.0},
        "eval": {"metric_before": 0.5, "metric": 0.9},
        "adapter": {"weights_bytes": 400},
        "reload": {"max_abs_logit_diff": 0.0},
        "peak_memory_bytes": 2**20,
        "wall_s": 2.0,
    }
    names = ["full", "houlsby"] if variant else ["full", "lora"]
    methods = {n: dict(method, kind=n if n != "full" else "full") for n in names}
    return {
        "data": {"fingerprint": fingerprint},
        "model": {"name": "m"},
        "budget": {"max_steps": 40},
        "methods": methods,
    }


def test_comparison_table_plot_and_merge_with_the_other_variant(tmp_path):
    mine = metrics_of(None)
    paths = write(rows_of(mine, None), tmp_path, "comparison", "accuracy", "t", "RSS")
    assert [p.name for p in paths] == ["comparison.csv", "comparison.md", "comparison.png"]
    csv_head = (tmp_path / "comparison.csv").read_text().splitlines()[0]
    assert csv_head.startswith("method,kind,library,trainable_params,without_head,trainable_percent,where")
    assert "| lora | transformers 5.24.0 | 100 | 90 |" in (tmp_path / "comparison.md").read_text()
    root = tmp_path / "outputs"
    for stamp, fingerprint in (("20260101T000000Z", "sha256:x"), ("20260102T000000Z", "sha256:other")):
        run_dir = root / "peft-methods" / "adapters-smoke" / stamp
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps(metrics_of("adapters", fingerprint)))
        (run_dir / "manifest.json").write_text(json.dumps({"status": "completed"}))
    candidates = completed_runs(root, "peft-methods", "adapters-smoke")
    assert [p.name for p in candidates] == ["20260102T000000Z", "20260101T000000Z"]  # newest first
    merged, why = merge_other(mine, None, tmp_path, candidates, "accuracy", "RSS")
    assert merged.name == "20260101T000000Z" and why is None  # the newest uses other data: skipped
    rows = (tmp_path / "comparison-all.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["full", "lora", "houlsby"]  # `full` once: this run's
    assert merge_other(mine, None, tmp_path, candidates[:1], "accuracy", "RSS")[0] is None


def test_the_merged_comparison_names_each_rows_run_and_the_methods_a_subset_run_left_out(tmp_path):
    """The adapters variant merges with the newest default run on the same data, which may be an
    only=[...] subset run: comparison-all says so (each row's run, the methods missing and why)."""
    subset = metrics_of(None)  # the default variant run with only=[lora]: full and dora left out
    del subset["methods"]["full"]
    why = "left out with only=[lora]"
    subset["not_run"] = {"methods_run": why, "methods.full.": why, "methods/full/": why, "methods.dora.": why}
    run_dir = tmp_path / "outputs" / "peft-methods" / "smoke" / "20260103T000000Z"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(subset))
    (run_dir / "manifest.json").write_text(json.dumps({"status": "completed"}))
    mine = metrics_of("adapters")
    merged, _ = merge_other(
        mine, "adapters", tmp_path, completed_runs(tmp_path / "outputs", "peft-methods", "smoke"), "accuracy", "RSS"
    )
    assert merged == run_dir
    with (tmp_path / "comparison-all.csv").open(encoding="utf-8") as f:
        rows = [(r["method"], r["run"]) for r in csv.DictReader(f)]
    assert rows == [("full", "this run"), ("houlsby", "this run"), ("lora", "smoke/20260103T000000Z")]
    md = (tmp_path / "comparison-all.md").read_text(encoding="utf-8")
    assert md.startswith("# every method: this run and smoke/20260103T000000Z (1 missing)\n")
    assert "| lora | transformers 5.24.0 | 100 | 90 |" in md and md.rstrip().count("smoke/20260103T000000Z |") == 1
    assert "Missing: dora (left out with only=[lora] in smoke/20260103T000000Z)" in md
    assert "Missing: full" not in md  # this run's full fine-tuning stands in


# --- the adapters variant, in its own environment ------------------------------------------------


def variant_python() -> Path:
    """The adapters variant's native environment, built (or found current) by the host tooling as
    `invoke run --variant adapters` builds it."""
    tooling = REPO_ROOT / ".venv" / "bin" / "python"
    if not tooling.exists():
        pytest.skip("no tooling virtualenv (.venv): `make venv` builds it")
    code = "from labkit.config import get_lab; from labkit.host.native import ensure_env; "
    code += "print(ensure_env(get_lab('peft-methods'), 'adapters'))"
    out = subprocess.run([str(tooling), "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif("adapters" in sys.modules or os.environ.get("PEFT_METHODS_VARIANT") == "adapters", reason="in it")
def test_adapters_variant_tests_pass_in_its_own_environment():
    python = variant_python()
    tests = str(LAB.dir / "tests" / "test_adapters_variant.py")
    result = subprocess.run(
        [str(python), "-m", "pytest", tests, "-q", "-p", "no:cacheprovider"],
        cwd=REPO_ROOT,
        env={**os.environ, "PEFT_METHODS_VARIANT": "adapters"},
        capture_output=True,
        text=True,
        check=False,
    )
    print(result.stdout[-3000:], result.stderr[-2000:])
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0 and "4 passed" in summary and "skipped" not in summary, summary
