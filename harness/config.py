"""Typed, validated run configuration: one schema per concern (model, data, masking, train, eval).

A run is fully described by a `RunConfig`. Every field carries a help string, unknown keys are
errors, and a config is frozen once validated: nothing downstream may mutate it, so the hash taken
at load time (the run id) stays true for the whole run.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from harness.inputs import yaml_problem
from harness.schema import ConfigError, Schema, known_encoding
from harness.taskdef import TaskDef

if TYPE_CHECKING:
    from harness.tasks import TaskSpec


# --------------------------------------------------------------------------------------- model

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # tiny: a CPU smoke scale that still learns document structure on the synthetic corpus.
    "tiny": {"layers": 2, "hidden": 128, "heads": 4, "ffn": 512, "max_len": 128},
    # small: the PERF-NOTES calibration size.
    "small": {"layers": 4, "hidden": 256, "heads": 4, "ffn": 1024, "max_len": 128},
    # base: BERT-base / RoBERTa-base.
    "base": {"layers": 12, "hidden": 768, "heads": 12, "ffn": 3072, "max_len": 512},
}


class ModelConfig(Schema):
    preset: Literal["tiny", "small", "base"] | None = Field(
        None, description="Named size the other fields were filled from (explicit fields override it)."
    )
    layers: int = Field(2, ge=1, description="Number of transformer encoder layers.")
    hidden: int = Field(128, ge=8, description="Hidden size (embedding width).")
    heads: int = Field(4, ge=1, description="Attention heads; must divide hidden.")
    ffn: int = Field(512, ge=8, description="Feed-forward inner size.")
    max_len: int = Field(
        128, ge=8, description="Longest sequence: rows of the learned position table (rope: of the rotation table)."
    )
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on embeddings, attention output and FFN output.")
    attention_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on attention probabilities.")
    norm: Literal["post", "pre"] = Field(
        "post", description="post: BERT/RoBERTa LayerNorm after residual; pre: before."
    )
    positions: Literal["learned", "rope"] | None = Field(
        None,
        description="How the encoder knows token order. learned (unset: as before the field existed): a table of "
        "absolute position embeddings added to the input, as BERT/RoBERTa; rope: rotary position embeddings "
        "(Su et al., 2021), queries and keys of every attention layer rotated by their position, no table.",
    )
    layer_norm_eps: float = Field(1e-12, gt=0.0, description="LayerNorm epsilon (BERT 1e-12, RoBERTa 1e-5).")
    init_std: float = Field(0.02, gt=0.0, description="Std of the normal init of all weights, as in BERT.")
    token_types: int = Field(2, ge=1, description="Segment (token type) embeddings; pair formats use ids 0 and 1.")
    init_from: str | None = Field(
        None,
        description="A finished run directory (or one made by `harness import-hf`) whose weights start this "
        "run: continued pretraining. Its tokenizer is used too, and its shape must match these fields.",
    )

    @field_validator("init_from")
    @classmethod
    def _has_a_checkpoint(cls, value: str | None) -> str | None:
        if value is not None and not (Path(value) / "checkpoint" / "model.safetensors").is_file():
            raise ValueError(f"{value}: no checkpoint/model.safetensors (a finished run directory is needed)")
        return value

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        if self.hidden % self.heads != 0:
            raise ValueError(f"heads ({self.heads}) must divide hidden ({self.hidden})")
        head_dim = self.hidden // self.heads
        if self.rope and head_dim % 2:
            raise ValueError(f"positions = rope rotates pairs of dimensions: hidden / heads ({head_dim}) must be even")
        return self

    @property
    def rope(self) -> bool:
        """Rotary positions; unset `positions` means learned ones."""
        return self.positions == "rope"


# ---------------------------------------------------------------------------------------- data


class SyntheticCorpus(Schema):
    source: Literal["synthetic"] = Field(description="The built-in generated corpus (no download).")
    documents: int = Field(1500, ge=10, description="Number of documents to generate.")
    seed: int = Field(0, description="Generator seed: fixes the vocabulary, topics and documents.")


class FilesCorpus(Schema):
    source: Literal["files"] = Field(description="Local text / JSONL / Parquet files.")
    paths: list[str] = Field(
        min_length=1,
        description="Files to read, in order (relative to the working directory); glob patterns expand sorted.",
    )
    format: Literal["text", "jsonl", "parquet"] | None = Field(
        None, description="File format; inferred from the suffix when omitted."
    )
    text_field: str = Field("text", description="Field holding a document's text in JSONL / Parquet rows.")
    text_layout: Literal["document_per_line", "blank_line_separated", "wikitext", "doc_tags"] = Field(
        "blank_line_separated",
        description="How documents are delimited in plain text files: wikitext = WikiText raw (' = Title = ' "
        "headings start a document); doc_tags = WikiExtractor output (<doc ...> ... </doc>).",
    )
    max_documents: int | None = Field(None, ge=1, description="Read at most this many documents.")
    encoding: str | None = Field(
        None,
        description="Text encoding of text and JSONL files, any Python codec name (unset: utf-8; latin-1 reads any "
        "byte). Parquet files carry their own. A byte that does not decode is an error naming the file and its "
        "offset.",
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        return known_encoding(value)

    @field_validator("paths")
    @classmethod
    def _files_exist(cls, paths: list[str]) -> list[str]:
        missing = [p for p in paths if not (Path(p).is_file() if not glob.has_magic(p) else glob.glob(p))]
        if missing:
            raise ValueError(f"corpus file not found: {', '.join(missing)}")
        return paths

    def files(self) -> list[Path]:
        """The paths with glob patterns expanded (sorted), in the order given."""
        return [Path(m) for p in self.paths for m in (sorted(glob.glob(p)) if glob.has_magic(p) else [p])]


class HubCorpus(Schema):
    source: Literal["hub"] = Field(description="A dataset on the Hugging Face hub, loaded with `datasets`.")
    name: str = Field(description="Hub dataset name, e.g. 'Salesforce/wikitext'.")
    config: str | None = Field(None, description="Dataset config name, e.g. 'wikitext-103-raw-v1'.")
    split: str = Field("train", description="Split to read.")
    text_field: str = Field("text", description="Column holding the text.")
    text_layout: Literal["wikitext"] | None = Field(
        None,
        description="unset: one row per document; wikitext: rows are WikiText raw lines, and a ' = Title = ' "
        "row starts an article (Salesforce/wikitext).",
    )
    max_documents: int | None = Field(None, ge=1, description="Read at most this many documents.")


CorpusConfig = Annotated[SyntheticCorpus | FilesCorpus | HubCorpus, Field(discriminator="source")]
# source name -> schema; pydantic puts the name of the matched variant into error locations
CORPUS_VARIANTS = {
    c.model_fields["source"].annotation.__args__[0]: c for c in (SyntheticCorpus, FilesCorpus, HubCorpus)
}


class TokenizerConfig(Schema):
    kind: Literal["byte_bpe", "wordpiece", "char_bpe"] = Field(
        "byte_bpe", description="byte_bpe: RoBERTa/GPT-2; wordpiece: BERT; char_bpe: character-level BPE."
    )
    vocab_size: int = Field(4096, ge=64, description="Target vocabulary size, special tokens included.")
    min_frequency: int = Field(2, ge=1, description="Minimum pair frequency for a merge / piece.")
    lowercase: bool = Field(False, description="Lowercase text before tokenizing (BERT uncased).")
    file: str | None = Field(
        None,
        description="Use this tokenizer.json instead of training one (vocab_size is then the file's); set "
        "automatically to the start checkpoint's tokenizer with model.init_from.",
    )

    @field_validator("file")
    @classmethod
    def _file_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"tokenizer file not found: {value}")
        return value

    @model_validator(mode="after")
    def _room_for_the_alphabet(self) -> TokenizerConfig:
        needed = 256 + 5  # every byte plus the five special tokens
        if self.kind == "byte_bpe" and self.vocab_size < needed:
            raise ValueError(f"byte_bpe needs vocab_size >= {needed} (256 bytes + 5 special tokens)")
        return self


PAIR_FORMATS = ("segment_pair", "sentence_pair")


class DataConfig(Schema):
    corpus: CorpusConfig = Field(
        default_factory=lambda: SyntheticCorpus(source="synthetic"), description="Where the text comes from."
    )
    heldout_fraction: float = Field(
        0.05, gt=0.0, lt=0.5, description="Fraction of documents held out for perplexity (same split for every arm)."
    )
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="Tokenizer trained on the corpus.")
    format: Literal["full_sentences", "doc_sentences", "segment_pair", "sentence_pair"] = Field(
        "full_sentences", description="Input format (RoBERTa §4.2)."
    )
    nsp: bool = Field(False, description="Next-sentence prediction loss; needs a pair format.")
    max_seq_len: int = Field(128, ge=8, description="Maximum tokens per sequence, special tokens included.")
    short_seq_prob: float = Field(
        0.1, ge=0.0, le=1.0, description="BERT's probability of a shorter target length in pair formats."
    )
    seed: int = Field(
        12345, ge=0, description="Seed of data preparation (pair sampling); run seeds share one prepared dataset."
    )

    @model_validator(mode="after")
    def _nsp_needs_pairs(self) -> DataConfig:
        if self.nsp and self.format not in PAIR_FORMATS:
            raise ValueError(f"nsp needs a pair format ({' or '.join(PAIR_FORMATS)}), not {self.format!r}")
        return self


# ------------------------------------------------------------------------------------- masking


class MaskingConfig(Schema):
    kind: Literal["static", "dynamic"] = Field(
        "dynamic", description="static: dupe_factor fixed masks cycled over epochs (BERT); dynamic: new every epoch."
    )
    dupe_factor: int = Field(10, ge=1, description="Distinct masks per sequence under static masking.")
    mask_prob: float = Field(0.15, gt=0.0, lt=1.0, description="Fraction of maskable positions selected.")
    replace_mask: float = Field(0.8, ge=0.0, le=1.0, description="Share of selected positions set to the mask token.")
    replace_random: float = Field(0.1, ge=0.0, le=1.0, description="Share set to a random non-special token.")
    keep: float = Field(0.1, ge=0.0, le=1.0, description="Share left unchanged (still predicted).")
    whole_word: bool = Field(
        False, description="Mask whole words (all pieces of a word, words from the tokenizer's pre-tokenizer)."
    )
    max_predictions: int | None = Field(
        None, ge=1, description="Cap on masked positions per sequence (BERT's max_predictions_per_seq)."
    )

    @model_validator(mode="after")
    def _shares_sum_to_one(self) -> MaskingConfig:
        total = self.replace_mask + self.replace_random + self.keep
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"replace_mask + replace_random + keep must be 1, got {total:g}")
        return self


# --------------------------------------------------------------------------------------- train


class TrainConfig(Schema):
    seed: int = Field(0, ge=0, description="Run seed: model init, data order, dynamic masks.")
    batch_size: int | None = Field(None, ge=1, description="Sequences per optimizer step (or give tokens_per_step).")
    tokens_per_step: int | None = Field(
        None, ge=1, description="Real (non-pad) tokens per optimizer step; sequences are added until reached."
    )
    micro_batch_size: int = Field(32, ge=1, description="Sequences per forward pass; gradients accumulate over them.")
    steps: int | None = Field(None, ge=1, description="Optimizer steps (or give token_budget).")
    token_budget: int | None = Field(None, ge=1, description="Total tokens; steps = token_budget / tokens per step.")
    lr: float = Field(1e-3, gt=0.0, description="Peak learning rate.")
    warmup_fraction: float = Field(0.06, ge=0.0, lt=1.0, description="Fraction of steps of linear warmup.")
    schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="Decay after warmup.")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1.")
    beta2: float = Field(0.98, ge=0.0, lt=1.0, description="AdamW beta2 (BERT 0.999, RoBERTa 0.98).")
    eps: float = Field(1e-6, gt=0.0, description="AdamW epsilon.")
    weight_decay: float = Field(0.01, ge=0.0, description="Decoupled weight decay (not on biases and norms).")
    clip_norm: float = Field(1.0, ge=0.0, description="Gradient norm clip; 0 disables.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU.")
    log_every: int = Field(10, ge=1, description="Steps between training-metric lines in metrics.jsonl.")
    eval_every: int = Field(0, ge=0, description="Steps between held-out loss evaluations; 0: only at the end.")
    pretrain: bool | None = Field(
        None,
        description="false: no optimizer step is taken: the encoder is evaluated as initialised (a random-init "
        "control), with data, tokenizer and evaluation exactly as in a trained run; unset: pretrain, as before "
        "the field existed.",
    )

    @model_validator(mode="after")
    def _one_of_each(self) -> TrainConfig:
        if (self.batch_size is None) == (self.tokens_per_step is None):
            raise ValueError("give exactly one of batch_size or tokens_per_step")
        if (self.steps is None) == (self.token_budget is None):
            raise ValueError("give exactly one of steps or token_budget")
        return self


# ---------------------------------------------------------------------------------------- eval


LrGrid = Annotated[list[Annotated[float, Field(gt=0.0)]] | None, Field(min_length=1)]
Pooling = Literal["first", "mean"] | None
LR_GRID_HELP = (
    "Learning rates to choose from, per task (unset: `lr`, as before the field existed). The choice is made "
    "on the training examples alone: fine-tune on a seeded 80% of them (first fine-tuning seed), score the "
    "task's first metric on the other 20%, keep the best lr (ties: the first in the grid); then every "
    "fine-tuning seed trains on the whole training set with it and is scored on dev. `lr` is then unused."
)
POOLING_HELP = (
    "What the classification head reads: first (unset: as before the field existed) = the first token's last "
    "hidden state, as RoBERTa; mean = the mean of the last hidden states over the real (non-pad) tokens."
)


def _distinct(grid: list[float] | None) -> list[float] | None:
    if grid is not None and len(set(grid)) != len(grid):
        raise ValueError(f"the learning rates of a grid must be distinct, got {grid}")
    return grid


class FinetuneConfig(Schema):
    max_len: int | None = Field(None, ge=8, description="Max tokens per example (default: data.max_seq_len).")
    epochs: float = Field(3.0, gt=0.0, description="Passes over the (capped) task training set.")
    lr: float = Field(1e-4, gt=0.0, description="Peak learning rate (linear warmup then decay).")
    batch_size: int = Field(32, ge=1, description="Examples per step.")
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of steps of warmup.")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay.")
    max_train_examples: int | None = Field(2000, ge=1, description="Cap on training examples (small budgets).")
    max_eval_examples: int | None = Field(None, ge=1, description="Cap on dev examples.")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="Fine-tuning seeds per task.")
    lr_grid: LrGrid = Field(None, description=LR_GRID_HELP)
    pooling: Pooling = Field(None, description=POOLING_HELP)

    @field_validator("lr_grid")
    @classmethod
    def _distinct_lrs(cls, grid: list[float] | None) -> list[float] | None:
        return _distinct(grid)


class FinetuneOverride(Schema):
    """Per-task changes to the shared protocol; unset fields keep the shared value."""

    max_len: int | None = Field(None, ge=8, description="Max tokens per example.")
    epochs: float | None = Field(None, gt=0.0, description="Passes over the task's training set.")
    lr: float | None = Field(None, gt=0.0, description="Peak learning rate.")
    batch_size: int | None = Field(None, ge=1, description="Examples per step.")
    warmup_fraction: float | None = Field(None, ge=0.0, lt=1.0, description="Fraction of steps of warmup.")
    weight_decay: float | None = Field(None, ge=0.0, description="AdamW weight decay.")
    max_train_examples: int | None = Field(None, ge=1, description="Cap on training examples.")
    max_eval_examples: int | None = Field(None, ge=1, description="Cap on dev examples.")
    lr_grid: LrGrid = Field(None, description="Learning rates to choose from for this task (see finetune.lr_grid).")
    pooling: Pooling = Field(None, description="How this task's head reads the encoder (see finetune.pooling).")

    @field_validator("lr_grid")
    @classmethod
    def _distinct_lrs(cls, grid: list[float] | None) -> list[float] | None:
        return _distinct(grid)


class TaskFiles(Schema):
    train: str = Field(
        description="Training examples: GLUE-style .tsv, .jsonl (one object per line) or .json (a list of "
        "objects, or an object of them keyed by id)."
    )
    dev: str = Field(description="Scored examples, in any of the same formats.")


class EvalConfig(Schema):
    heldout_sequences: int = Field(256, ge=1, description="Held-out packed sequences scored for perplexity.")
    mask_seed: int = Field(12345, description="Seed of the fixed held-out mask (shared by every arm).")
    batch_size: int = Field(64, ge=1, description="Sequences per evaluation forward pass.")
    tasks: list[str] = Field(
        default_factory=list,
        description="Downstream tasks fine-tuned after pretraining: the built-in sst2, mnli, mnli-mm, qnli, rte, "
        "mrpc, cola, stsb, qqp, synthetic-topic, synthetic-pair (harness/tasks.yaml), squad, squad2 (span "
        "extraction), or any of task_defs.",
    )
    glue_dir: str | None = Field(
        None, description="Local GLUE download (TSV layout: SST-2/train.tsv, ...); unset: the hub (nyu-mll/glue)."
    )
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="Fine-tuning protocol (all tasks).")
    dev_splits: dict[str, str] = Field(
        default_factory=dict,
        description="Task name -> split scored instead of the default dev split: a file stem under glue_dir "
        "(e.g. dev_mismatched), or a hub split name.",
    )
    task_overrides: dict[str, FinetuneOverride] = Field(
        default_factory=dict, description="Task name -> changes to the shared fine-tuning protocol for that task."
    )
    task_files: dict[str, TaskFiles] | None = Field(
        None,
        description="Built-in task name -> its own train and dev files, for data not in GLUE's layout (e.g. MNLI as "
        "JSONL); takes precedence over glue_dir and the hub for that task. SQuAD: JSON files; the same file as "
        "train and dev is split by article (every 4th article scored).",
    )
    task_defs: dict[str, TaskDef] | None = Field(
        None,
        description="Tasks declared as data (unset: none, as before the field existed): name -> definition: its "
        "files or hub dataset, how they are read, its text and label fields, labels or regression, metrics and "
        "caps (harness/taskdef.py). A suite's task files (`tasks_from`) add the definitions its runs name.",
    )

    @model_validator(mode="after")
    def _known_tasks_with_files(self) -> EvalConfig:
        from harness.squad import SPAN_TASKS
        from harness.taskdef import TASK_NAME
        from harness.tasks import TASKS

        declared = self.task_defs or {}
        for name in declared:
            if not re.fullmatch(TASK_NAME, name):
                raise ValueError(f"task_defs.{name}: task names use letters, digits, _ and - (no '.')")
            if name in TASKS:
                raise ValueError(
                    f"task_defs.{name}: {name} is a built-in task (harness/tasks.yaml): choose another name"
                )
        task_files = self.task_files or {}
        known = [*TASKS, *SPAN_TASKS]
        for name in [*self.tasks, *self.task_overrides, *self.dev_splits, *task_files]:
            if name not in known and name not in declared:
                declare = f"; declared: {', '.join(declared)}" if declared else ""
                raise ValueError(
                    f"unknown task {name!r} (expected one of: {', '.join(known)}{declare}; "
                    "or declare it under eval.task_defs)"
                )
        for name, files in task_files.items():
            if name in declared:
                raise ValueError(f"task_files.{name}: {name} is declared in task_defs: give its files there")
            for path in (files.train, files.dev):
                if not Path(path).is_file():
                    raise ValueError(f"task {name}: {path} not found (eval.task_files.{name})")
        for name in self.dev_splits:
            if name in declared and declared[name].train is not None:
                raise ValueError(f"dev_splits.{name}: {name} reads its own files: name the dev file in task_defs")
        for name in self.tasks:
            if name not in SPAN_TASKS:  # SQuAD reads its own JSON files or the hub
                self._check_source(name, task_files)
        return self

    def _check_source(self, name: str, task_files: dict[str, TaskFiles]) -> None:
        """A task read from a GLUE download needs its files there; one with no other source needs glue_dir."""
        definition = self.task(name).definition
        if definition.synthetic or name in task_files or definition.train is not None:
            return
        glue = definition.glue
        if glue is not None and self.glue_dir is not None:
            for split in (glue.train, self.dev_splits.get(name, glue.dev)):
                path = Path(self.glue_dir) / glue.folder / f"{split}.tsv"
                if not path.is_file():
                    raise ValueError(f"task {name}: {path} not found (glue_dir must hold GLUE's TSV layout)")
        elif definition.hub is None:
            raise ValueError(f"task {name}: reads a GLUE download ({glue.folder}/): set eval.glue_dir")

    def task(self, name: str) -> TaskSpec:
        """The task of that name: declared here, else built in."""
        from harness.tasks import TASKS, TaskSpec

        declared = (self.task_defs or {}).get(name)
        if declared is not None:
            return TaskSpec(name, declared)
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r} (expected one of: {', '.join([*TASKS, *(self.task_defs or {})])})")
        return TASKS[name]

    def finetune_for(self, task: str) -> FinetuneConfig:
        """The shared protocol with the task's overrides applied."""
        changes = self.task_overrides.get(task)
        if changes is None:
            return self.finetune
        return self.finetune.model_copy(update=changes.model_dump(exclude_none=True))


# ----------------------------------------------------------------------------------------- run


class RunConfig(Schema):
    model: ModelConfig = Field(default_factory=ModelConfig, description="Encoder architecture.")
    data: DataConfig = Field(default_factory=DataConfig, description="Corpus, tokenizer and input format.")
    masking: MaskingConfig = Field(default_factory=MaskingConfig, description="MLM masking scheme.")
    train: TrainConfig = Field(description="Optimisation and budget.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Perplexity and downstream evaluation.")

    @model_validator(mode="before")
    @classmethod
    def _tokenizer_of_the_start_checkpoint(cls, raw: Any) -> Any:
        """Continued pretraining reads text with the tokenizer the weights were trained with."""
        if not isinstance(raw, dict):
            return raw
        init_from = (raw.get("model") or {}).get("init_from") if isinstance(raw.get("model"), dict) else None
        tokenizer = ((raw.get("data") or {}).get("tokenizer") or {}) if isinstance(raw.get("data"), dict) else {}
        if init_from and isinstance(tokenizer, dict) and not tokenizer.get("file"):
            raw = copy.deepcopy(raw)
            raw.setdefault("data", {}).setdefault("tokenizer", {})["file"] = str(
                Path(init_from) / "checkpoint" / "tokenizer.json"
            )
        return raw

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        if self.data.max_seq_len > self.model.max_len:
            raise ValueError(f"data.max_seq_len ({self.data.max_seq_len}) exceeds model.max_len ({self.model.max_len})")
        if self.data.format in PAIR_FORMATS and self.model.token_types < 2:
            raise ValueError(
                f"model.token_types must be >= 2 for the pair format {self.data.format!r} (B is segment 1)"
            )
        from harness.squad import SPAN_TASKS

        for task in self.eval.tasks:
            if task in SPAN_TASKS:
                continue
            if self.eval.task(task).definition.synthetic and self.data.corpus.source != "synthetic":
                raise ValueError(f"eval.tasks: {task} needs data.corpus.source = synthetic")
        return self

    def run_id(self) -> str:
        """Content address of the pretrained model: the same resolved config always gives the same id
        (see `run_id_of`)."""
        return run_id_of(self.model_dump(mode="json"))


# the eval fields that decide the held-out MLM metrics recorded during pretraining (batch_size: the float
# sums run in another order); every other eval field only decides downstream fine-tuning
HELDOUT_EVAL_FIELDS = ("heldout_sequences", "mask_seed", "batch_size")

# every field added to RunConfig from now on belongs here, with None meaning "as before it existed"
# (fields of `eval` other than HELDOUT_EVAL_FIELDS need no entry: they are not part of the run id)
ADDED_LATER = (
    "model.init_from",
    "data.tokenizer.file",
    "data.corpus.text_layout",
    "data.corpus.encoding",
    "model.positions",
    "train.pretrain",
)


def pretraining_part(dump: dict[str, Any]) -> dict[str, Any]:
    """What of a config dump (`RunConfig.model_dump(mode="json")`, as config.json holds it) decides the
    pretrained model and its recorded held-out metrics: model, data, masking, train and the held-out
    fields of eval; fields added later only when set."""
    reduced = copy.deepcopy({key: value for key, value in dump.items() if key != "eval"})
    evaluation = dump.get("eval") or {}
    reduced["eval"] = {name: evaluation[name] for name in HELDOUT_EVAL_FIELDS if name in evaluation}
    for path in ADDED_LATER:
        _drop_unset(reduced, path.split("."))
    return reduced


def run_id_of(dump: dict[str, Any]) -> str:
    """The run id of a config dump: a hash of its pretraining part, so downstream settings (tasks, the
    fine-tuning protocol, where task data lives) leave it unchanged and a finished model is evaluated
    again rather than pretrained again. Fields added after results existed (ADDED_LATER) count only
    when set, so adding one leaves every earlier run id, and the records filed under it, valid."""
    canonical = json.dumps(pretraining_part(dump), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _drop_unset(holder: Any, parts: list[str]) -> None:
    """Delete the leaf at `parts` (`*` matching every key of a mapping) wherever it is None."""
    head, *rest = parts
    if not isinstance(holder, dict):
        return
    if not rest:
        if head in holder and holder[head] is None:
            del holder[head]
        return
    for child in holder.values() if head == "*" else [holder.get(head)]:
        _drop_unset(child, rest)


HELDOUT_METRICS = ("heldout_loss", "heldout_ppl", "heldout_acc", "heldout_bpb")  # on the FULL-SENTENCES yardstick
# the same scored once more on the finished model, on each arm's own format (harness/runner.py)
OWN_FORMAT_METRICS = tuple(m.replace("heldout_", "heldout_own_", 1) for m in HELDOUT_METRICS)
PRETRAINING_METRICS = (*HELDOUT_METRICS, *OWN_FORMAT_METRICS, "train_loss")
# facts about a run's model and text encoding, reported beside its scores (text-encoding ablations)
RUN_FACTS = ("parameters", "heldout_unk_rate")


def lower_is_better(metric: str) -> bool:
    """Losses, perplexities, bits per byte, unknown-token rates and model size fall as a setting improves; every
    other metric rises."""
    return metric.endswith(("loss", "ppl", "bpb", "unk_rate", "parameters"))


def metric_names(task_defs: dict[str, TaskDef] | None = None) -> list[str]:
    """Every metric a run can report: pretraining ones, then `<task>.<metric>` for every built-in
    task, span task and task of `task_defs`."""
    from harness.squad import SPAN_TASKS
    from harness.tasks import TASKS

    metrics = {
        **{t: spec.metrics for t, spec in TASKS.items()},
        **{t: spec.metrics for t, spec in SPAN_TASKS.items()},
        **{t: d.metrics for t, d in (task_defs or {}).items()},
    }
    return [*PRETRAINING_METRICS, *RUN_FACTS, *(f"{t}.{m}" for t, names in metrics.items() for m in names)]


# ------------------------------------------------------------------------------ dict utilities


VARIANT_KEY = "source"  # the field that picks a corpus schema; other variants' fields do not carry over


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new dict: override's leaves replace base's; nested dicts merge; lists replace whole.
    A mapping that switches variant (another `source`) replaces the base's mapping whole."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        old = merged.get(key)
        switches = (
            isinstance(old, dict)
            and isinstance(value, dict)
            and value.get(VARIANT_KEY, old.get(VARIANT_KEY)) != old.get(VARIANT_KEY)
        )
        if isinstance(value, dict) and isinstance(old, dict) and not switches:
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def expand_presets(raw: dict[str, Any]) -> dict[str, Any]:
    """Fill model fields from `model.preset`; fields given explicitly win."""
    model = raw.get("model")
    if isinstance(model, dict) and model.get("preset") is not None:
        preset = model["preset"]
        if not isinstance(preset, str) or preset not in MODEL_PRESETS:
            return raw  # validation reports the bad name with the allowed values
        raw = dict(raw)
        raw["model"] = {**MODEL_PRESETS[preset], **model}
    return raw


def parse_set(assignment: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value parsed as a YAML scalar, so 7e-4, true, [1,2] work)."""
    if "=" not in assignment:
        raise ConfigError("--set", assignment, "expected KEY.PATH=VALUE")
    key, _, text = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError("--set", assignment, "expected KEY.PATH=VALUE")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError("--set", key, f"value is not valid YAML ({yaml_problem(err)})") from None
    return parts, value


def nested(parts: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(parts):
        out = {part: out}
    return out


def _describe(err: dict[str, Any], schema_fields: dict[str, Any] | None) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = f" (expected one of: {', '.join(sorted(schema_fields))})" if schema_fields else ""
        return f"unknown key{allowed}"
    if kind == "missing":
        return "required key is missing"
    message = err["msg"].removeprefix("Value error, ")
    return f"{message} (got {err['input']!r})" if kind != "value_error" and "input" in err else message


def _fields_at(loc: tuple[Any, ...]) -> dict[str, Any] | None:
    """The allowed keys of the schema that holds the last element of loc, for 'unknown key' messages."""
    model: Any = RunConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            # a discriminated union member name (e.g. 'files') sits between field names in the loc
            model = CORPUS_VARIANTS.get(part, model)
            continue
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        inner = [a for arg in args for a in getattr(arg, "__args__", ())]  # dict[str, X] | None: X
        sub = next((a for a in (annotation, *args, *inner) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            return None
        model = sub
    return getattr(model, "model_fields", None)


def validate_run_config(raw: dict[str, Any], source: str) -> RunConfig:
    """Validate a resolved config dict; any problem becomes a ConfigError naming source and key path."""
    try:
        return RunConfig.model_validate(expand_presets(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if p not in CORPUS_VARIANTS or len(err["loc"]) == 1)
        path = ".".join(str(p) for p in loc)
        raise ConfigError(source, path, _describe(err, _fields_at(tuple(err["loc"])))) from None


def has_path(tree: dict[str, Any], path: str) -> bool:
    """Whether an override decides the value at key path `a.b.c`: it sets that path or something
    below it, or replaces a parent whole (a non-mapping, or a mapping that switches `source`)."""
    node: Any = tree
    for part in path.split(".") if path else []:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
        if not isinstance(node, dict) or VARIANT_KEY in node:
            return True
    return True
