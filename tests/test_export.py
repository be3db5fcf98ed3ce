"""Export to Hugging Face transformers: exact logits and loss, fill-mask, round trips, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_suite
from safetensors.torch import load_file

from harness.cli import main
from harness.data.masking import IGNORE
from harness.export import ExportError, export_run, import_hf
from harness.runner import load_pretrained

transformers = pytest.importorskip("transformers")


def train_suite(root: Path, arms: dict, *extra: str, steps: int = 8) -> dict[str, Path]:
    suite = tiny_suite(arms=arms)
    suite["base"]["train"].update({"steps": steps})
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = root / "results"
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--no-report", *extra]) == 0
    runs = {}
    for directory in (out / "t").iterdir():
        if directory.is_dir():
            runs[yaml.safe_load((directory / "config.json").read_text())["arm"]] = directory
    return runs


ARMS = {
    # RoBERTa: byte-level BPE, packed sentences, no NSP
    "roberta": {},
    # BERT: WordPiece, segment pairs with NSP
    "bert": {"data": {"tokenizer": {"kind": "wordpiece", "vocab_size": 1024}, "format": "segment_pair", "nsp": True}},
    # char-level BPE keeps RoBERTa's <s>-style specials but exports as a BERT model
    "charbpe": {"data": {"tokenizer": {"kind": "char_bpe", "vocab_size": 1024}}},
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    runs = train_suite(root, ARMS)
    out = {}
    for arm, run_dir in runs.items():
        out[arm] = (run_dir, export_run(run_dir, root / f"hf-{arm}", log=lambda *_: None))
    return out


def padded_batch(tokenizer_dir: Path):
    """Two sentences of different length through the exported tokenizer: right padding included."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = ["the river runs past the old mill and the long field", "a short one"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["attention_mask"].min() == 0, "the batch must contain padding"
    return tokenizer, batch


def our_logits(run_dir: Path, batch) -> torch.Tensor:
    config, model, _, _ = load_pretrained(run_dir)
    model.eval()
    ids = batch["input_ids"]
    types = batch.get("token_type_ids", torch.zeros_like(ids))
    with torch.no_grad():
        hidden = model.roberta(ids, types, batch["attention_mask"].bool())
        return model.lm_head(hidden, model.roberta.embeddings.word_embeddings.weight), model, hidden


@pytest.mark.parametrize(
    ("arm", "expected"),
    [("roberta", "RobertaForMaskedLM"), ("bert", "BertForMaskedLM"), ("charbpe", "BertForMaskedLM")],
)
def test_transformers_logits_equal_ours_on_a_padded_batch(exported, arm, expected):
    run_dir, hf_dir = exported[arm]
    hf = transformers.AutoModelForMaskedLM.from_pretrained(hf_dir).eval()
    assert type(hf).__name__ == expected
    _, batch = padded_batch(hf_dir)
    ours, _, _ = our_logits(run_dir, batch)
    with torch.no_grad():
        theirs = hf(**batch).logits
    real = batch["attention_mask"].bool()
    assert (theirs[real] - ours[real]).abs().max() < 1e-5
    # the MLM loss over masked positions is the same number too
    labels = torch.full_like(batch["input_ids"], IGNORE)
    labels[0, 2], labels[0, 5], labels[1, 1] = (
        batch["input_ids"][0, 2],
        batch["input_ids"][0, 5],
        batch["input_ids"][1, 1],
    )
    config, model, _, _ = load_pretrained(run_dir)
    model.eval()
    types = batch.get("token_type_ids", torch.zeros_like(batch["input_ids"]))
    with torch.no_grad():
        out = model(batch["input_ids"], types, real, labels)
        hf_loss = hf(**batch, labels=labels).loss
    assert float(out.mlm_loss_sum / out.masked) == pytest.approx(float(hf_loss), abs=1e-5)


def test_bert_export_keeps_the_nsp_head(exported):
    run_dir, hf_dir = exported["bert"]
    hf = transformers.BertForPreTraining.from_pretrained(hf_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    batch = tokenizer(["the first half"], ["and the second half of it"], return_tensors="pt")
    _, model, hidden = our_logits(run_dir, batch)
    with torch.no_grad():
        ours = model.nsp_head(torch.tanh(model.pooler(hidden[:, 0])))
        theirs = hf(**batch).seq_relationship_logits
    assert (ours - theirs).abs().max() < 1e-5
    assert batch["token_type_ids"].max() == 1, "the exported tokenizer marks segment B"


@pytest.mark.parametrize("arm", ["roberta", "bert"])
def test_fill_mask_pipeline_runs_on_the_export(exported, arm):
    _, hf_dir = exported[arm]
    fill = transformers.pipeline("fill-mask", model=str(hf_dir), tokenizer=str(hf_dir), device="cpu")
    mask = fill.tokenizer.mask_token
    predictions = fill(f"the river runs past the {mask} mill")
    assert len(predictions) == 5 and all(mask not in p["sequence"] for p in predictions)
    card = (hf_dir / "README.md").read_text()
    assert "## Budget" in card and "8 steps" in card and "heldout_ppl" in card


def test_roberta_export_mask_takes_the_space_before_it_and_the_length_is_the_models(exported):
    _, hf_dir = exported["roberta"]
    fill = transformers.pipeline("fill-mask", model=str(hf_dir), tokenizer=str(hf_dir), device="cpu")
    tokenizer = fill.tokenizer
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("the <mask> of the river")["input_ids"])
    assert tokens[:3] == ["<s>", "Ġthe", "<mask>"], "no lone 'Ġ' before <mask>, as in RoBERTa's tokenizer"
    for prediction in fill("the <mask> of the river"):
        # the candidate sits where <mask> was: no doubled space (the leading one is add_prefix_space's)
        assert prediction["sequence"] == " the" + prediction["token_str"] + " of the river"
    # 64 positions (tiny_suite's max_len), though RoBERTa's table has pad_id + 1 rows more
    assert tokenizer.model_max_length == 64
    assert fill.model.config.max_position_embeddings == 64 + fill.model.config.pad_token_id + 1
    bert = transformers.AutoTokenizer.from_pretrained(exported["bert"][1])
    assert bert.model_max_length == 64


@pytest.mark.parametrize("arm", ["roberta", "bert"])
def test_import_then_export_reproduces_the_same_tensors(exported, tmp_path, arm):
    _, hf_dir = exported[arm]
    run_dir = import_hf(hf_dir, tmp_path / "imported", log=lambda *_: None)
    again = export_run(run_dir, tmp_path / "again", log=lambda *_: None)
    first, second = load_file(str(hf_dir / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # and the imported run is evaluated like any run
    config, model, tokenizer, _ = load_pretrained(run_dir)
    assert config.data.nsp == (arm == "bert") and tokenizer.get_vocab_size() == model.lm_head.bias.shape[0]


def test_a_compiled_run_exports_without_wrapper_prefixes(tmp_path):
    from harness.bench import compiled

    if compiled(torch.nn.Linear(2, 2))[1] != "compiled":
        pytest.skip("torch.compile unavailable here")
    runs = train_suite(tmp_path, {"roberta": {}}, "--compile", steps=2)
    run_dir = runs["roberta"]
    assert all("_orig_mod" not in k for k in load_file(str(run_dir / "checkpoint" / "model.safetensors")))
    hf_dir = export_run(run_dir, tmp_path / "hf", log=lambda *_: None)
    assert all("_orig_mod" not in k for k in load_file(str(hf_dir / "model.safetensors")))
    transformers.AutoModelForMaskedLM.from_pretrained(hf_dir)


def test_pre_norm_is_refused_by_name(tmp_path, capsys):
    runs = train_suite(tmp_path, {"prenorm": {"model": {"norm": "pre"}}}, steps=2)
    with pytest.raises(ExportError, match="model.norm = pre"):
        export_run(runs["prenorm"], tmp_path / "hf")
    assert main(["export", str(runs["prenorm"]), "--out", str(tmp_path / "hf")]) == 2
    assert "model.norm = pre" in capsys.readouterr().err
    assert not (tmp_path / "hf" / "config.json").exists()


def test_rotary_positions_are_refused_by_name(tmp_path, capsys):
    runs = train_suite(tmp_path, {"rope": {"model": {"positions": "rope"}}}, steps=2)
    with pytest.raises(ExportError, match="model.positions = rope: transformers' BERT and RoBERTa use learned"):
        export_run(runs["rope"], tmp_path / "hf")
    assert main(["export", str(runs["rope"]), "--out", str(tmp_path / "hf")]) == 2
    assert "model.positions = rope" in capsys.readouterr().err
    assert not (tmp_path / "hf" / "config.json").exists()


def test_pretraining_continues_from_an_imported_checkpoint(exported, tmp_path):
    _, hf_dir = exported["roberta"]
    start = import_hf(hf_dir, tmp_path / "imported", log=lambda *_: None)
    suite = tiny_suite(arms={"continued": {}})
    suite["base"]["model"]["init_from"] = str(start)
    suite["base"]["train"].update({"steps": 3, "log_every": 1})
    path = tmp_path / "continue.yaml"
    path.write_text(yaml.safe_dump(suite))
    from harness.suite import load_suite

    config = load_suite(path).runs[0].config
    assert config.data.tokenizer.file == str(start / "checkpoint" / "tokenizer.json"), "the checkpoint's tokenizer"
    assert main(["run", str(path), "--out", str(tmp_path / "results"), "--no-progress", "--no-report"]) == 0
    (run_dir,) = [p for p in (tmp_path / "results" / "t").iterdir() if p.is_dir()]
    trained_vocab = load_pretrained(run_dir)[2].get_vocab()
    assert trained_vocab == load_pretrained(start)[2].get_vocab()
    from harness.records import RunRecord

    first_loss = next(r["train_loss"] for r in RunRecord(run_dir).metrics() if "train_loss" in r)
    fresh_loss = torch.log(torch.tensor(float(len(trained_vocab)))).item()
    assert first_loss < fresh_loss - 0.5, "the first step starts from pretrained weights, not from scratch"


def test_init_from_a_different_shape_is_refused(exported, tmp_path, capsys):
    run_dir, _ = exported["roberta"]
    suite = tiny_suite(arms={"wider": {"model": {"hidden": 128, "heads": 2, "ffn": 128}}})
    suite["base"]["model"]["init_from"] = str(run_dir)
    suite["base"]["train"]["steps"] = 2
    path = tmp_path / "wider.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["run", str(path), "--out", str(tmp_path / "results"), "--no-progress", "--no-report"]) == 1
    assert "the model differs: hidden 128 here, 64 in the checkpoint" in capsys.readouterr().err


def test_init_from_other_positions_is_refused(exported, tmp_path, capsys):
    run_dir, _ = exported["roberta"]
    suite = tiny_suite(arms={"rope": {"model": {"positions": "rope"}}})
    suite["base"]["model"]["init_from"] = str(run_dir)
    suite["base"]["train"]["steps"] = 2
    path = tmp_path / "rope.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["run", str(path), "--out", str(tmp_path / "results"), "--no-progress", "--no-report"]) == 1
    assert "the model differs: positions rope here, learned in the checkpoint" in capsys.readouterr().err
