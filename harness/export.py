"""Hugging Face transformers interop: export a finished run, import an existing checkpoint.

Export writes a directory `AutoModelForMaskedLM.from_pretrained` and `AutoTokenizer.from_pretrained`
load with no extra code: `RobertaForMaskedLM` for runs without NSP on byte-level BPE,
`BertForMaskedLM` for runs without NSP on WordPiece or char-BPE, `BertForPreTraining` (MLM + NSP
heads) for runs with NSP. Our parameter names already follow Hugging Face's layout, so the weights
map by renaming; the two conventions that differ are spelled out here: RoBERTa numbers positions
from pad_id + 1 (rows below that are unused), and the MLM decoder is tied to the word embeddings.
Options transformers has no equivalent for (pre-norm, rotary positions) are refused by name, never silently dropped.

Import goes the other way: a local BERT/RoBERTa checkpoint directory becomes a run directory that
`harness eval` fine-tunes with the same evaluator as harness-trained arms, and that export writes
back unchanged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, processors

from harness.config import ModelConfig
from harness.integrity import CHECKPOINT_FILES, write_contents
from harness.model import PretrainingModel, plain_state_dict
from harness.records import RunRecord, plain_mode


class ExportError(ValueError):
    """A run that cannot become the requested transformers model, with the reason."""


def target_class(kind: str, nsp: bool) -> str:
    if nsp:
        return "BertForPreTraining"
    return "RobertaForMaskedLM" if kind == "byte_bpe" else "BertForMaskedLM"


def refuse_unexportable(model_config: ModelConfig) -> None:
    if model_config.norm == "pre":
        raise ExportError(
            "model.norm = pre: transformers' BERT and RoBERTa are post-norm (LayerNorm after each residual), "
            "so a pre-norm encoder has no equivalent there; export refused rather than written as a different model"
        )
    if model_config.rope:
        raise ExportError(
            "model.positions = rope: transformers' BERT and RoBERTa use learned absolute positions (a position "
            "embedding table added to the input), so a rotary-position encoder has no equivalent there; export "
            "refused rather than written as a different model"
        )


def hf_config(model_config: ModelConfig, vocab_size: int, specials, kind: str, nsp: bool):
    from transformers import BertConfig, RobertaConfig

    common = dict(
        vocab_size=vocab_size, hidden_size=model_config.hidden, num_hidden_layers=model_config.layers,
        num_attention_heads=model_config.heads, intermediate_size=model_config.ffn, hidden_act="gelu",
        hidden_dropout_prob=model_config.dropout, attention_probs_dropout_prob=model_config.attention_dropout,
        layer_norm_eps=model_config.layer_norm_eps, initializer_range=model_config.init_std,
        type_vocab_size=model_config.token_types, pad_token_id=specials.pad,
    )  # fmt: skip
    if target_class(kind, nsp) == "RobertaForMaskedLM":
        # RoBERTa's position ids start at pad_id + 1: the table needs that many extra rows
        return RobertaConfig(
            **common, max_position_embeddings=model_config.max_len + specials.pad + 1,
            bos_token_id=specials.cls, eos_token_id=specials.sep,
        )  # fmt: skip
    return BertConfig(**common, max_position_embeddings=model_config.max_len)


def to_hf_state(state: dict[str, torch.Tensor], target: str, pad_id: int) -> dict[str, torch.Tensor]:
    """Our state dict -> the transformers model's, by name (and RoBERTa's position offset)."""
    out: dict[str, torch.Tensor] = {}
    prefix = "roberta." if target == "RobertaForMaskedLM" else "bert."
    words = state["roberta.embeddings.word_embeddings.weight"]
    for key, value in state.items():
        if key.startswith("roberta."):
            name = prefix + key[len("roberta.") :]
            if key == "roberta.embeddings.position_embeddings.weight" and target == "RobertaForMaskedLM":
                table = torch.zeros(value.shape[0] + pad_id + 1, value.shape[1], dtype=value.dtype)
                table[pad_id + 1 :] = value
                value = table
            out[name] = value
        elif key.startswith("lm_head."):
            part = key[len("lm_head.") :]
            if target == "RobertaForMaskedLM":
                out[key] = value
            else:
                renamed = {"dense.weight": "transform.dense.weight", "dense.bias": "transform.dense.bias",
                           "layer_norm.weight": "transform.LayerNorm.weight",
                           "layer_norm.bias": "transform.LayerNorm.bias", "bias": "bias"}[part]  # fmt: skip
                out[f"cls.predictions.{renamed}"] = value
        elif key.startswith("pooler."):
            out[f"bert.pooler.dense.{key.split('.', 1)[1]}"] = value
        elif key.startswith("nsp_head."):
            out[f"cls.seq_relationship.{key.split('.', 1)[1]}"] = value
        else:
            raise ExportError(f"parameter {key} has no place in {target}")
    if target == "RobertaForMaskedLM":
        out["lm_head.decoder.weight"] = words
        out["lm_head.decoder.bias"] = state["lm_head.bias"]
    else:
        out["cls.predictions.decoder.weight"] = words
        out["cls.predictions.decoder.bias"] = state["lm_head.bias"]
    return out


def from_hf_state(state: dict[str, torch.Tensor], target: str, pad_id: int) -> dict[str, torch.Tensor]:
    """The inverse of to_hf_state."""
    out: dict[str, torch.Tensor] = {}
    prefix = "roberta." if target == "RobertaForMaskedLM" else "bert."
    back = {"transform.dense.weight": "dense.weight", "transform.dense.bias": "dense.bias",
            "transform.LayerNorm.weight": "layer_norm.weight", "transform.LayerNorm.bias": "layer_norm.bias",
            "bias": "bias"}  # fmt: skip
    for key, value in state.items():
        if key.startswith(prefix + "pooler."):
            out[f"pooler.{key.rsplit('.', 1)[1]}"] = value
        elif key.startswith(prefix):
            name = "roberta." + key[len(prefix) :]
            if name == "roberta.embeddings.position_embeddings.weight" and target == "RobertaForMaskedLM":
                value = value[pad_id + 1 :]
            if name.endswith("position_ids") or name.endswith("token_type_ids"):
                continue  # buffers, not parameters
            out[name] = value
        elif key.startswith("lm_head.") and not key.startswith("lm_head.decoder."):
            out[key] = value
        elif key.startswith("cls.predictions.") and not key.startswith("cls.predictions.decoder."):
            out[f"lm_head.{back[key[len('cls.predictions.') :]]}"] = value
        elif key.startswith("cls.seq_relationship."):
            out[f"nsp_head.{key.rsplit('.', 1)[1]}"] = value
    return out


def _hf_tokenizer(tokenizer: Tokenizer, pairs: bool, byte_level: bool, max_length: int):
    """A transformers fast tokenizer over our tokenizer, adding the specials as the model expects.
    The special-token names say which convention the tokenizer follows (byte-level and char BPE use
    RoBERTa's `<s>`, WordPiece BERT's `[CLS]`); runs trained on pairs get segment ids. On byte-level
    BPE `<mask>` takes the space before it, as RoBERTa's does: "the <mask> of" is 'Ġthe', '<mask>',
    'Ġof', not 'Ġthe', 'Ġ', '<mask>'. `max_length` is the longest input the model's positions allow."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(tokenizer.to_str())
    if tok.token_to_id("<s>") is not None:
        mask: str | AddedToken = "<mask>"
        if byte_level:
            mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
            tok.add_special_tokens([mask])  # an existing token: only its flags change
        names = {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
                 "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": mask}  # fmt: skip
        cls, sep = "<s>", "</s>"
        # our pair layout: <s> A </s> </s> (segment 0), then B </s> (segment 1)
        pair = f"{cls} $A {sep} {sep} $B:1 {sep}:1" if pairs else f"{cls} $A {sep} {sep} $B {sep}"
    elif tok.token_to_id("[CLS]") is not None:
        names = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
                 "mask_token": "[MASK]"}  # fmt: skip
        cls, sep = "[CLS]", "[SEP]"
        pair = f"{cls} $A {sep} $B:1 {sep}:1"
        pairs = True  # BERT's tokenizers always give segment ids
    else:
        raise ExportError("the tokenizer has neither <s>/</s> nor [CLS]/[SEP] special tokens")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=pair,
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )  # fmt: skip
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if pairs else ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=inputs, model_max_length=max_length, **names)


def export_run(run_dir: Path, out_dir: Path, log=print) -> Path:
    """Write `run_dir`'s model and tokenizer as a transformers checkpoint directory with a model card."""
    import transformers

    from harness.runner import load_pretrained

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config, model, tokenizer, specials = load_pretrained(run_dir)
    refuse_unexportable(config.model)
    kind, nsp = config.data.tokenizer.kind, config.data.nsp
    target = target_class(kind, nsp)
    hf_model = getattr(transformers, target)(hf_config(config.model, tokenizer.get_vocab_size(), specials, kind, nsp))
    missing, unexpected = hf_model.load_state_dict(to_hf_state(plain_state_dict(model), target, specials.pad),
                                                   strict=False)  # fmt: skip
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise ExportError(f"weights do not map onto {target}: missing {missing}, unexpected {unexpected}")
    pairs = config.data.format in ("segment_pair", "sentence_pair")
    # before anything is written: no half exports. max_len, not max_position_embeddings: RoBERTa's
    # table has pad_id + 1 extra rows below its first position (as roberta-base: 514 rows, 512 tokens)
    hf_tokenizer = _hf_tokenizer(tokenizer, pairs, kind == "byte_bpe", config.model.max_len)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out_dir, safe_serialization=True)
    for weights in out_dir.glob("*.safetensors"):
        plain_mode(weights)
    hf_tokenizer.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(model_card(run_dir, target), encoding="utf-8")
    log(f"{run_dir} -> {out_dir} ({target}, {sum(p.numel() for p in hf_model.parameters()):,} parameters)")
    return out_dir


def model_card(run_dir: Path, target: str) -> str:
    record = RunRecord(run_dir)
    header, summary = record.config or {}, record.summary or {}
    metrics = summary.get("metrics", {})
    budget = summary.get("budget", {})
    config = header.get("config", {})
    origin = (
        f"A `{target}` imported from `{header['imported_from']}`; it was not pretrained by harness, so the data "
        "and budget below describe nothing it saw."
        if "imported_from" in header
        else f"A `{target}` pretrained with harness (run `{header.get('run_id', run_dir.name)}`, code "
        f"{summary.get('environment', {}).get('code', '?')})."
    )
    lines = [
        f"# {header.get('suite', '?')} / {header.get('arm', '?')} (seed {header.get('seed', '?')})",
        "",
        origin,
        "",
        "## Data",
        "",
        f"Corpus: `{json.dumps(config.get('data', {}).get('corpus', {}))}`; tokenizer "
        f"`{json.dumps(config.get('data', {}).get('tokenizer', {}))}`; input format "
        f"`{config.get('data', {}).get('format')}`, NSP {config.get('data', {}).get('nsp')}, max length "
        f"{config.get('data', {}).get('max_seq_len')}; masking `{json.dumps(config.get('masking', {}))}`.",
        "",
        "## Budget",
        "",
        f"{budget.get('steps', '?')} steps, {budget.get('tokens', 0):,} tokens, {budget.get('epochs', '?')} passes "
        f"over the data, {summary.get('wall_s', '?')} s on {summary.get('environment', {}).get('device', '?')}.",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {name} | {value:.4f} |" for name, value in metrics.items() if isinstance(value, (int, float))],
        "",
        "## Config",
        "",
        "```json",
        json.dumps(config, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def import_hf(hf_dir: Path, run_dir: Path, log=print) -> Path:
    """Make a run directory from a local BERT/RoBERTa checkpoint: `harness eval` fine-tunes it like any
    harness run, and `harness export` writes it back. Pre-training does not continue from it."""
    import transformers

    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    if not (hf_dir / "config.json").is_file():
        raise ExportError(f"{hf_dir}: no config.json: not a transformers checkpoint directory")
    if not (hf_dir / "tokenizer.json").is_file():
        raise ExportError(f"{hf_dir}: no tokenizer.json (a fast tokenizer file is needed)")
    hf_config_ = transformers.AutoConfig.from_pretrained(hf_dir)
    model_type = hf_config_.model_type
    if model_type not in ("roberta", "bert"):
        raise ExportError(f"{hf_dir}: model_type {model_type!r}; only bert and roberta checkpoints are read")
    if getattr(hf_config_, "hidden_act", "gelu") != "gelu":
        raise ExportError(f"{hf_dir}: activation {hf_config_.hidden_act!r}; the harness encoder uses gelu")
    if getattr(hf_config_, "position_embedding_type", "absolute") != "absolute":
        raise ExportError(f"{hf_dir}: position_embedding_type {hf_config_.position_embedding_type!r} is not absolute")
    architecture = (
        hf_config_.architectures or ["RobertaForMaskedLM" if model_type == "roberta" else "BertForMaskedLM"]
    )[0]
    nsp = architecture == "BertForPreTraining"
    target = architecture if architecture in ("RobertaForMaskedLM", "BertForMaskedLM", "BertForPreTraining") else None
    if target is None:
        raise ExportError(f"{hf_dir}: architecture {architecture} (expected a masked-LM or pretraining model)")
    kind = "byte_bpe" if model_type == "roberta" else "wordpiece"
    pad = hf_config_.pad_token_id
    max_len = hf_config_.max_position_embeddings - (pad + 1 if model_type == "roberta" else 0)
    model_config = ModelConfig(
        layers=hf_config_.num_hidden_layers, hidden=hf_config_.hidden_size, heads=hf_config_.num_attention_heads,
        ffn=hf_config_.intermediate_size, max_len=max_len, dropout=hf_config_.hidden_dropout_prob,
        attention_dropout=hf_config_.attention_probs_dropout_prob, layer_norm_eps=hf_config_.layer_norm_eps,
        init_std=hf_config_.initializer_range, token_types=hf_config_.type_vocab_size,
    )  # fmt: skip
    hf_model = getattr(transformers, target).from_pretrained(hf_dir)
    state = from_hf_state(hf_model.state_dict(), target, pad)
    tokenizer = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    tokenizer.post_processor = None  # the harness adds special tokens itself
    model = PretrainingModel(model_config, hf_config_.vocab_size, pad, nsp=nsp)
    model.load_state_dict(state, strict=True)
    run_config = _imported_run_config(model_config, kind, tokenizer.get_vocab_size(), nsp)
    checkpoint = run_dir / "checkpoint"
    checkpoint.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(plain_state_dict(model), str(checkpoint / "model.safetensors"))
    plain_mode(checkpoint / "model.safetensors")
    tokenizer.save(str(checkpoint / "tokenizer.json"))
    write_contents(checkpoint, CHECKPOINT_FILES)
    record = RunRecord(run_dir)
    header = {"suite": "imported", "arm": hf_dir.name, "seed": 0, "run_id": run_dir.name, "imported_from": str(hf_dir)}
    record.start(header, run_config)
    record.finish({**header, "metrics": {}, "downstream": {}, "imported": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    log(f"{hf_dir} ({architecture}) -> {run_dir}: `harness eval {run_dir} --task ...` fine-tunes it")
    return run_dir


def _imported_run_config(model_config: ModelConfig, kind: str, vocab: int, nsp: bool) -> dict[str, Any]:
    """A RunConfig describing the imported model: its shape and tokenizer; the data section names no
    pretraining corpus (the model was not pretrained here), only what evaluation needs."""
    from harness.config import validate_run_config

    raw = {
        "model": model_config.model_dump(mode="json"),
        "data": {
            "corpus": {"source": "synthetic", "documents": 10, "seed": 0},
            "tokenizer": {"kind": kind, "vocab_size": vocab},
            "format": "segment_pair" if nsp else "full_sentences",
            "nsp": nsp,
            "max_seq_len": model_config.max_len,
        },
        "train": {"tokens_per_step": 1024, "steps": 1},
    }
    return validate_run_config(raw, "import").model_dump(mode="json")
