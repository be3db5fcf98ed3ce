"""Suites: a YAML file with a base config, named arms (partial overrides) and seeds -> runs.

Every problem with a suite is found here, before any training: unknown keys, wrong types,
impossible values and arm overrides of keys that do not exist all raise `ConfigError` naming the
file and the key path.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from harness.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    Schema,
    TokenizerConfig,
    deep_merge,
    expand_presets,
    has_path,
    metric_names,
    nested,
    parse_set,
    validate_run_config,
)
from harness.inputs import load_yaml
from harness.taskdef import TaskDef

CONTROLS = ("random_init",)
RANDOM_INIT = "random-init"  # the control's arm name (arm names cannot hold the ':' of a group's name)


class PaperRef(Schema):
    table: str = Field(description="Table id in ablations/paper/*.yaml, e.g. roberta-table1.")
    arm: str = Field(description="The table's row that corresponds to the compared arm.")
    baseline: str = Field(description="The table's row that corresponds to the baseline arm.")


class ComparisonSpec(Schema):
    arm: str = Field(description="Arm compared.")
    baseline: str = Field(description="Arm it is compared against.")
    paper: PaperRef | None = Field(None, description="The paper's rows for the same two settings, if any.")

    @property
    def name(self) -> str:
        return f"{self.arm} vs {self.baseline}"


class ParamSpace(Schema):
    """One searched config field."""

    type: typing.Literal["float", "log_float", "int", "log_int", "categorical"]
    low: float | None = Field(None, description="Lower bound (float / int types).")
    high: float | None = Field(None, description="Upper bound, inclusive (float / int types).")
    step: float | None = Field(None, gt=0, description="Grid step (float / int types, not with log).")
    choices: list[Any] | None = Field(None, description="Values to choose from (categorical).")

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpace:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical space needs a non-empty `choices` list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical space takes `choices`, not low/high")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} space takes low/high, not `choices`")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} space needs `low` and `high`")
        if not self.low < self.high:
            raise ValueError(f"empty range: low {self.low} must be below high {self.high}")
        if self.type.startswith("log") and self.low <= 0:
            raise ValueError(f"a log range must be positive; low is {self.low}")
        if self.type.startswith("log") and self.step is not None:
            raise ValueError("a log space has no `step`")
        if self.type.endswith("int") and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int space needs whole-number bounds")
        return self


class SearchObjective(Schema):
    metric: str = Field(description="Any metric a run reports, e.g. heldout_loss or sst2.accuracy.")
    direction: typing.Literal["minimize", "maximize"] | None = Field(
        None, description="Default: minimize losses and perplexities, maximize everything else."
    )


class SamplerSpec(Schema):
    kind: typing.Literal["tpe", "random"] = "tpe"
    seed: int = Field(0, description="Sampler seed; worker k of a search uses seed + k.")
    startup_trials: int = Field(4, ge=0, description="Random trials before TPE models the space.")


class PrunerSpec(Schema):
    kind: typing.Literal["none", "median", "successive_halving", "hyperband"] = "median"
    startup_trials: int = Field(2, ge=0, description="Median: finished trials before any pruning.")
    warmup_reports: int = Field(1, ge=0, description="Median: reports of a trial before it can be pruned.")
    min_resource: int = Field(1, ge=1, description="Halving / hyperband: reports before the first rung.")
    reduction_factor: int = Field(3, ge=2, description="Halving / hyperband: 1/factor of trials go on per rung.")


class SearchSpec(Schema):
    objective: SearchObjective
    space: dict[str, ParamSpace] = Field(min_length=1, description="Config path (train.lr) -> its range.")
    trials: int | None = Field(20, ge=1, description="Trials in the whole study (all workers together).")
    timeout_s: float | None = Field(None, gt=0, description="Stop starting trials after this long (per worker).")
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    report_every_tokens: int | None = Field(
        None, ge=1, description="Held-out loss every this many training tokens, fed to the pruner."
    )
    per_arm: bool = Field(False, description="One study per arm, each arm compared at its own best setting.")
    seed: int | None = Field(None, description="Pretraining seed of every trial (default: the suite's first).")
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, description="Points tried first, e.g. the current setting: {train.lr: 1e-4}."
    )
    heartbeat_s: int = Field(60, ge=1, description="A running trial's heartbeat interval.")
    grace_s: int = Field(180, ge=2, description="A trial silent this long belongs to a dead worker: retried.")
    max_retries: int = Field(2, ge=0, description="Retries of a trial whose worker died.")


class Variant(Schema):
    """Overrides a suite applies as a whole: a scale (tiny / small / base), or its local-data setting."""

    description: str = Field("", description="What this variant is for.")
    base: dict[str, Any] = Field(default_factory=dict, description="Partial override of the suite's base.")
    arms: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Arm name -> partial override.")
    seeds: list[int] | None = Field(None, min_length=1, description="Pretraining seeds instead of the suite's.")
    controls: list[str] | None = Field(None, description="Controls instead of the suite's (e.g. [random_init]).")
    metrics: list[str] | None = Field(None, min_length=1, description="Metrics to report instead of the suite's.")


class SuiteSpec(Schema):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Suite name; results go to <out>/<name>/.")
    description: str = Field("", description="What the suite asks.")
    base: dict[str, Any] = Field(description="Config shared by every arm (a preset plus overrides).")
    arms: dict[str, dict[str, Any] | None] = Field(min_length=1, description="Arm name -> partial override of base.")
    seeds: list[int] = Field(min_length=1, description="Pretraining seeds; every arm runs once per seed (distinct).")
    metrics: list[str] = Field(
        default_factory=lambda: ["heldout_ppl"], min_length=1, description="Metrics to report; the first is headline."
    )
    baseline: str | None = Field(None, description="Arm the others are compared with (default: the first).")
    comparisons: list[ComparisonSpec] = Field(
        default_factory=list, description="Pairs of arms to compare (default: every arm against the baseline)."
    )
    search: SearchSpec | None = Field(None, description="A hyperparameter search over this suite (harness search).")
    scales: dict[str, Variant] = Field(
        default_factory=dict,
        description="Named scales (--set scale=NAME); results go to <out>/<name>.<scale>/.",
    )
    default_scale: str | None = Field(None, description="The scale used when none is chosen.")
    local: Variant | None = Field(
        None,
        description="Overrides for running from local files instead of hub names, applied when --set local=DIR "
        "or the HARNESS_LOCAL_DATA environment variable gives the data directory; '{local}' in any string "
        "is replaced by it.",
    )
    local_default: str | None = Field(
        None,
        description="Data directory (relative to the working directory) for the local variant when neither "
        "--set local nor HARNESS_LOCAL_DATA names one, it exists, and the Hugging Face hub cannot be reached.",
    )
    tasks_from: list[str] = Field(
        default_factory=list,
        description="Task files (YAML: task name -> definition, as eval.task_defs; paths relative to the working "
        "directory). Each run takes from them the definitions of the tasks its eval names and does not declare "
        "itself, so an unused definition never enters a run's config or id.",
    )
    controls: list[str] = Field(
        default_factory=list,
        description="Control runs added to the arms, once per seed. random_init: the baseline arm's config "
        "(with arms of different model or tokenizer, each group's first arm) without pretraining, evaluated "
        "the same way; every arm is compared against its control.",
    )

    def comparison_list(self, baseline: str | None = None) -> list[ComparisonSpec]:
        """The comparisons a report makes: every arm against `baseline` when one is given, else the
        suite's own list, else every arm against the suite's baseline (default: the first arm); then,
        with controls, every arm against its random-init control."""
        if baseline is None and self.comparisons:
            listed = list(self.comparisons)
        else:
            reference = baseline or self.baseline or next(iter(self.arms))
            listed = [ComparisonSpec(arm=arm, baseline=reference) for arm in self.arms if arm != reference]
        names = {c.name for c in listed}
        against_controls = [ComparisonSpec(arm=arm, baseline=control) for arm, control in self.control_of().items()]
        return listed + [c for c in against_controls if c.name not in names]

    def control_of(self) -> dict[str, str]:
        """Arm -> the name of its random-init control (empty without controls). Arms that share the
        model and the tokenizer (defaults filled in; `--set` overrides, the same for every arm, aside)
        share one control, `random-init`; with several such groups, each is `random-init:<first arm>`."""
        if "random_init" not in self.controls:
            return {}
        groups: dict[str, list[str]] = {}
        for arm in self.arms:
            groups.setdefault(self._encoding_key(arm), []).append(arm)
        if len(groups) == 1:
            return {arm: RANDOM_INIT for arm in self.arms}
        return {arm: f"{RANDOM_INIT}:{members[0]}" for members in groups.values() for arm in members}

    def control_sources(self) -> dict[str, str]:
        """Control name -> the arm whose config it takes: the baseline when every arm shares one
        control, else the first arm of the group."""
        sources: dict[str, str] = {}
        for arm, control in self.control_of().items():
            sources.setdefault(control, arm)
        if list(sources) == [RANDOM_INIT]:
            sources[RANDOM_INIT] = self.baseline or next(iter(self.arms))
        return sources

    def _encoding_key(self, arm: str) -> str:
        merged = expand_presets(deep_merge(self.base, self.arms[arm] or {}))
        model = merged.get("model")
        data = merged.get("data")
        tokenizer = data.get("tokenizer") if isinstance(data, dict) else None

        def filled(schema: type[Schema], given: Any) -> dict[str, Any]:
            given = given if isinstance(given, dict) else {}
            # the preset only names where the sizes came from (expanded above): not part of the model
            return {n: given.get(n, info.default) for n, info in schema.model_fields.items() if n != "preset"}

        return json.dumps([filled(ModelConfig, model), filled(TokenizerConfig, tokenizer)], sort_keys=True, default=str)


@dataclass(frozen=True)
class Run:
    suite: str
    arm: str
    seed: int
    config: RunConfig
    tags: dict[str, Any] = field(default_factory=dict)  # e.g. a search's study and trial number

    @property
    def run_id(self) -> str:
        return self.config.run_id()

    @property
    def header(self) -> dict[str, Any]:
        """What a run record says about where the run comes from."""
        return {"suite": self.suite, "arm": self.arm, "seed": self.seed, "run_id": self.run_id, **self.tags}


@dataclass(frozen=True)
class Suite:
    path: Path
    spec: SuiteSpec
    runs: list[Run]

    @property
    def name(self) -> str:
        return self.spec.name

    def by_arm(self) -> dict[str, list[Run]]:
        """The runs of each arm, arms in suite order."""
        grouped: dict[str, list[Run]] = {}
        for run in self.runs:
            grouped.setdefault(run.arm, []).append(run)
        return grouped

    def run_dir(self, out_root: Path, run: Run) -> Path:
        return Path(out_root) / self.name / run.run_id


@functools.cache
def _run_schema_tree() -> dict[str, Any]:
    return _schema_tree(RunConfig)


def _check_override_keys(override: dict[str, Any], source: str, path: str) -> None:
    """Reject keys the run schema lacks, naming the arm's own key path (a merged config would only
    say 'unknown key' without saying which arm wrote it)."""
    _walk(override, _run_schema_tree(), source, path)


ANY_KEY = "*"


def _schema_tree(model: Any) -> dict[str, Any] | None:
    fields = getattr(model, "model_fields", None)
    if fields is None:
        return None
    tree: dict[str, Any] = {}
    for name, info in fields.items():
        annotation = info.annotation
        members = [annotation, *getattr(annotation, "__args__", ())]
        # a union of schemas (the corpus sources): the keys of all members are acceptable here
        subtrees = [t for t in (_schema_tree(m) for m in members if isinstance(m, type)) if t is not None]
        merged: dict[str, Any] | None = None
        for sub in subtrees:
            merged = {**(merged or {}), **sub}
        # a mapping field (eval.task_overrides): any key, each value following the value's schema
        tree[name] = {ANY_KEY: merged} if typing.get_origin(annotation) is dict else merged
    return tree


def _walk(override: dict[str, Any], tree: dict[str, Any] | None, source: str, path: str) -> None:
    if tree is None:
        return
    for key, value in override.items():
        here = f"{path}.{key}" if path else key
        if ANY_KEY in tree:
            if isinstance(value, dict):
                _walk(value, tree[ANY_KEY], source, here)
            continue
        if key not in tree:
            raise ConfigError(source, here, f"unknown key (expected one of: {', '.join(sorted(tree))})")
        if isinstance(value, dict):
            _walk(value, tree[key], source, here)


def _attribute(err: ConfigError, arm: str, arm_override: dict[str, Any], cli: dict[str, Any]) -> ConfigError:
    """Name where the bad value was written: `--set`, the arm's override, or the base. A cross-field
    error (at `data`, or at the top) belongs to the arm when the arm changed anything under it."""
    path = err.key_path
    if path == "train.seed":
        return ConfigError(err.source, "seeds", err.message)
    if path and has_path(cli, path):
        return ConfigError("--set", path, err.message)
    touched_by_arm = has_path(arm_override, path) if path else bool(arm_override)
    prefix = f"arms.{arm}" if touched_by_arm else "base"
    return ConfigError(err.source, f"{prefix}.{path}" if path else prefix, err.message)


def _check_train_section(override: dict[str, Any], source: str, prefix: str) -> None:
    """`train` must be a mapping, and must not set the seed: seeds come from the suite's list (the
    per-seed merge would silently overwrite it)."""
    train = override.get("train")
    if train is not None and not isinstance(train, dict):
        raise ConfigError(source, f"{prefix}train", "expected a mapping of train settings")
    if isinstance(train, dict) and "seed" in train:
        raise ConfigError(source, f"{prefix}train.seed", "the seed comes from the suite's `seeds` list; set it there")


def _check_comparisons(spec: SuiteSpec, source: str) -> None:
    from harness.paper import load_paper_tables

    for index, comparison in enumerate(spec.comparisons):
        where = f"comparisons.{index}"
        for side in ("arm", "baseline"):
            if getattr(comparison, side) not in spec.arms:
                raise ConfigError(source, f"{where}.{side}", f"no arm named {getattr(comparison, side)!r}")
        if comparison.arm == comparison.baseline:
            raise ConfigError(source, where, "an arm compared with itself")
        ref = comparison.paper
        if ref is None:
            continue
        tables = load_paper_tables()
        if ref.table not in tables:
            raise ConfigError(
                source, f"{where}.paper.table", f"unknown table {ref.table!r} (have: {', '.join(tables)})"
            )
        rows = tables[ref.table][1].rows
        for side in ("arm", "baseline"):
            if getattr(ref, side) not in rows:
                raise ConfigError(
                    source,
                    f"{where}.paper.{side}",
                    f"{ref.table} has no row {getattr(ref, side)!r} (have: {', '.join(rows)})",
                )


LOCAL_DATA_ENV = "HARNESS_LOCAL_DATA"
VARIANT_CHOICES = ("scale", "local")


def _pop_variant_choices(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """`--set scale=tiny` and `--set local=DIR` choose a suite's variants; they are not config paths."""
    rest, chosen = [], {}
    for assignment in overrides:
        key, _, value = assignment.partition("=")
        if key.strip() in VARIANT_CHOICES:
            if not value.strip():
                raise ConfigError("--set", key.strip(), "expected a value")
            chosen[key.strip()] = value.strip()
        else:
            rest.append(assignment)
    return rest, chosen


def _substitute(tree: Any, local_dir: str) -> Any:
    if isinstance(tree, dict):
        return {k: _substitute(v, local_dir) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_substitute(v, local_dir) for v in tree]
    return tree.replace("{local}", local_dir) if isinstance(tree, str) else tree


def _local_dir(spec: SuiteSpec, chosen: str | None) -> str | None:
    """The local data directory: the one chosen, else the environment's, else the suite's default
    when the hub is out of reach (checked only then, so a suite without a default never waits on it)."""
    local_dir = chosen or os.environ.get(LOCAL_DATA_ENV)
    if local_dir is not None or spec.local is None or spec.local_default is None:
        return local_dir
    if not Path(spec.local_default).is_dir():
        return None
    from harness.data.sources import hub_reachable

    if hub_reachable():
        return None
    _announce_local(spec.name, spec.local_default)
    return spec.local_default


@functools.cache  # a command loads its suite more than once (run, then report): say it once
def _announce_local(suite: str, local_dir: str) -> None:
    print(
        f"{suite}: the Hugging Face hub is out of reach; using the local data in {local_dir} "
        f"(--set local=DIR or {LOCAL_DATA_ENV} chooses another)",
        file=sys.stderr,
    )


def _apply_variants(spec: SuiteSpec, source: str, scale: str | None, local_dir: str | None) -> SuiteSpec:
    """Fold the chosen scale and, with a local data directory, the local overrides into base and arms.
    A scaled suite is its own suite: `<name>.<scale>`, so scales never mix in one results directory."""
    variants: list[tuple[str, Variant]] = []
    # local first: it swaps the data source, and a scale then sizes whichever source is in use
    if local_dir is not None and spec.local is not None:
        variants.append(("local", Variant.model_validate(_substitute(spec.local.model_dump(), local_dir))))
    if spec.scales:
        scale = scale or spec.default_scale
        if scale is None:
            raise ConfigError("--set", "scale", f"choose a scale: --set scale=NAME ({', '.join(spec.scales)})")
        if scale not in spec.scales:
            raise ConfigError("--set", "scale", f"no scale {scale!r} (have: {', '.join(spec.scales)})")
        variants.append((f"scales.{scale}", spec.scales[scale]))
    elif scale is not None:
        raise ConfigError("--set", "scale", "this suite declares no scales")
    base, arms, seeds, controls, metrics = spec.base, dict(spec.arms), spec.seeds, spec.controls, spec.metrics
    for where, variant in variants:
        seeds = variant.seeds or seeds
        controls = variant.controls if variant.controls is not None else controls
        metrics = variant.metrics or metrics
        _check_override_keys(variant.base, source, f"{where}.base")
        base = deep_merge(base, variant.base)
        for arm, override in variant.arms.items():
            if arm not in arms:
                raise ConfigError(source, f"{where}.arms.{arm}", f"no arm named {arm!r}")
            _check_override_keys(override, source, f"{where}.arms.{arm}")
            arms[arm] = deep_merge(arms[arm] or {}, override)
    name = f"{spec.name}.{scale}" if spec.scales else spec.name
    description = spec.description.strip()
    for where, variant in variants:  # a report states the scale's departures beside the suite's question
        if variant.description.strip():
            label = "Local data" if where == "local" else where.replace("scales.", "Scale ")
            description += f"\n\n{label}: {variant.description.strip()}"
    update = {"name": name, "base": base, "arms": arms, "seeds": seeds, "description": description}
    # only what a variant set: model_copy marks every updated field as given, and a suite that left
    # `metrics` at its default is treated differently from one that asked (see _check_per_token_metrics)
    if controls != spec.controls:
        update["controls"] = controls
    if metrics != spec.metrics:
        update["metrics"] = metrics
    return spec.model_copy(update=update)


def load_suite(path: str | Path, overrides: list[str] = (), arms: list[str] | None = None) -> Suite:
    """Read and fully validate a suite; `overrides` are `--set key.path=value` strings applied to every arm."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(source, "", "suite file not found")
    raw = load_yaml(path, "suite")
    if not isinstance(raw, dict):
        raise ConfigError(source, "", "expected a mapping with name, base, arms, seeds")
    try:
        spec = SuiteSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "extra_forbidden":
            message += f" (expected one of: {', '.join(SuiteSpec.model_fields)})"
        raise ConfigError(source, key, message) from None

    overrides, chosen = _pop_variant_choices(list(overrides))
    spec = _apply_variants(spec, source, chosen.get("scale"), _local_dir(spec, chosen.get("local")))
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(source, "seeds", f"seeds must be distinct, got {spec.seeds}")
    _check_override_keys(spec.base, source, "base")
    cli_override: dict[str, Any] = {}
    for assignment in overrides:
        parts, value = parse_set(assignment)
        _check_override_keys(nested(parts, value), "--set", "")
        cli_override = deep_merge(cli_override, nested(parts, value))

    library = _task_library(spec, source)
    if spec.baseline is not None and spec.baseline not in spec.arms:
        raise ConfigError(source, "baseline", f"no arm named {spec.baseline!r}")
    _check_comparisons(spec, source)

    _check_controls(spec, source)
    controls = spec.control_sources()
    selected, selected_controls = list(spec.arms), list(controls)
    if arms:
        unknown = [a for a in arms if a not in spec.arms and a not in controls]
        if unknown:
            have = ", ".join([*spec.arms, *controls])
            raise ConfigError(source, "arms", f"no arm named {', '.join(unknown)} (have: {have})")
        selected = [a for a in spec.arms if a in arms]
        selected_controls = [c for c in controls if c in arms]

    _check_train_section(cli_override, "--set", "")
    _check_train_section(spec.base, source, "base.")
    runs: list[Run] = []
    for arm in selected:
        runs.extend(_arm_runs(spec, arm, cli_override, source, library))
    # controls come after every arm, so adding them leaves the arms' places in `--shard` unchanged
    for control in selected_controls:
        runs.extend(_control_runs(spec, control, controls[control], cli_override, source, library))
    _check_distinct_models(runs, source)
    declared = {name: d for run in runs for name, d in (run.config.eval.task_defs or {}).items()}
    known_metrics = metric_names(declared)
    for metric in spec.metrics:
        if metric not in known_metrics:
            raise ConfigError(
                source, "metrics", f"unknown metric {metric!r} (expected one of: {', '.join(known_metrics)})"
            )
    for metric in spec.metrics:
        task = metric.split(".")[0]
        if "." in metric and any(task not in r.config.eval.tasks for r in runs):
            raise ConfigError(source, "metrics", f"{metric!r} needs eval.tasks to include {task!r} in every arm")
    _check_per_token_metrics(spec, source, runs)
    if spec.search is not None:
        _check_search(spec.search, source, runs, known_metrics)
    return Suite(path=path, spec=spec, runs=runs)


def _task_library(spec: SuiteSpec, source: str) -> dict[str, TaskDef]:
    """The definitions of the suite's task files, each file validated on its own (errors name it)."""
    from harness.tasks import TASKS, load_task_definitions

    library: dict[str, TaskDef] = {}
    origin: dict[str, str] = {}
    for index, path in enumerate(spec.tasks_from):
        if not Path(path).is_file():
            raise ConfigError(source, f"tasks_from.{index}", f"task file {path} not found")
        for name, definition in load_task_definitions(path).items():
            if name in TASKS:
                raise ConfigError(path, name, f"{name} is a built-in task (harness/tasks.yaml): choose another name")
            if name in library:
                raise ConfigError(path, name, f"{name} is defined in {origin[name]} too")
            library[name], origin[name] = definition, path
    return library


def _with_library_tasks(resolved: dict[str, Any], library: dict[str, TaskDef]) -> dict[str, Any]:
    """The resolved config with the task-file definitions of every task its eval names (in tasks,
    task_overrides or dev_splits) and does not declare itself added to eval.task_defs."""
    evaluation = resolved.get("eval")
    if not library or not isinstance(evaluation, dict):
        return resolved
    named = []
    for key in ("tasks", "task_overrides", "dev_splits"):
        value = evaluation.get(key)
        named += [n for n in value if isinstance(n, str)] if isinstance(value, (list, dict)) else []
    own = evaluation.get("task_defs")
    own = own if isinstance(own, dict) else {}
    added = {n: library[n].model_dump(mode="json", exclude_none=True) for n in named if n in library and n not in own}
    if not added:
        return resolved
    return deep_merge(resolved, {"eval": {"task_defs": {**own, **added}}})


def _arm_runs(
    spec: SuiteSpec, arm: str, cli_override: dict[str, Any], source: str, library: dict[str, TaskDef] | None = None
) -> list[Run]:
    """One run per seed of the arm, its config resolved base <- arm <- `--set` and validated; the
    task-file definitions of the tasks it names are added to its eval.task_defs."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", arm):
        raise ConfigError(source, f"arms.{arm}", "arm names may use letters, digits and . _ + -")
    arm_override = spec.arms[arm] or {}
    _check_override_keys(arm_override, source, f"arms.{arm}")
    _check_train_section(arm_override, source, f"arms.{arm}.")
    resolved = _with_library_tasks(deep_merge(deep_merge(spec.base, arm_override), cli_override), library or {})
    runs = []
    for seed in spec.seeds:
        seeded = deep_merge(resolved, {"train": {"seed": seed}})
        try:
            config = validate_run_config(seeded, source)
        except ConfigError as err:
            raise _attribute(err, arm, arm_override, cli_override) from None
        runs.append(Run(suite=spec.name, arm=arm, seed=seed, config=config))
    return runs


def _control_runs(
    spec: SuiteSpec,
    control: str,
    arm: str,
    cli_override: dict[str, Any],
    source: str,
    library: dict[str, TaskDef] | None = None,
) -> list[Run]:
    """The random-init control of `arm`, per seed: the arm's resolved config with `train.pretrain`
    false (so its own run id) and no `model.init_from` (the encoder keeps the random initialisation
    the seed gives; a start checkpoint's tokenizer is still used). Evaluated like every run."""
    runs = []
    for run in _arm_runs(spec, arm, cli_override, source, library):
        raw = deep_merge(
            run.config.model_dump(mode="json"), {"model": {"init_from": None}, "train": {"pretrain": False}}
        )
        config = validate_run_config(raw, source)
        tags = {"control": "random_init", "built_from": arm}
        runs.append(Run(suite=spec.name, arm=control, seed=run.seed, config=config, tags=tags))
    return runs


def _check_distinct_models(runs: list[Run], source: str) -> None:
    """Arms that differ in downstream settings alone would pretrain one model: one run id, one record,
    which keeps one result per task. Refused, naming both arms (arms with the very same config share
    their record, as they always have)."""
    first: dict[str, Run] = {}
    for run in runs:
        other = first.setdefault(run.run_id, run)
        if other.arm != run.arm and other.config != run.config:
            raise ConfigError(
                source,
                f"arms.{run.arm}",
                f"pretrains the same model as arm {other.arm} (run id {run.run_id}): arms differing in eval settings "
                "alone share one run; evaluate another protocol of a finished run with `harness eval RUN --set "
                "eval.KEY=VALUE`",
            )


def _check_controls(spec: SuiteSpec, source: str) -> None:
    for index, name in enumerate(spec.controls):
        if name not in CONTROLS:
            raise ConfigError(
                source, f"controls.{index}", f"unknown control {name!r} (expected one of: {', '.join(CONTROLS)})"
            )
        if name in spec.controls[:index]:
            raise ConfigError(source, f"controls.{index}", f"control {name!r} is listed twice")
    if spec.controls and RANDOM_INIT in spec.arms:
        raise ConfigError(
            source, f"arms.{RANDOM_INIT}", f"{RANDOM_INIT!r} names the suite's random-init control: rename the arm"
        )


def _check_per_token_metrics(spec: SuiteSpec, source: str, runs: list[Run]) -> None:
    """Per-token held-out loss between arms that tokenize differently compares cuts, not models. A
    suite that asked for it is refused; one that left `metrics` at its default is not (its report
    marks those cells "not comparable")."""
    from harness.references import per_token_refusal

    if "metrics" not in spec.model_fields_set:
        return

    tokenizers = {}
    for run in runs:
        tok = run.config.data.tokenizer
        tokenizers[run.arm] = " ".join(str(v) for v in (tok.kind, tok.vocab_size, tok.file) if v is not None)
    for comparison in spec.comparison_list():
        if comparison.arm not in tokenizers or comparison.baseline not in tokenizers:
            continue  # an arm left out with --arm: nothing of it runs here
        for metric in spec.metrics:
            refusal = per_token_refusal(metric, comparison.arm, tokenizers[comparison.arm], comparison.baseline,
                                        tokenizers[comparison.baseline])  # fmt: skip
            if refusal:
                raise ConfigError(source, "metrics", f"comparison {comparison.name}: {refusal}")


def _search_bounds(space: ParamSpace) -> list[Any]:
    if space.type == "categorical":
        return list(space.choices or [])
    cast = int if space.type.endswith("int") else float
    return [cast(space.low), cast(space.high)]


def _check_search(search: SearchSpec, source: str, runs: list[Run], known_metrics: list[str]) -> None:
    """A search that cannot work is an error before any trial: unknown paths, values the config
    rejects at either end of a range, an unknown objective, enqueued points outside the space."""
    metric = search.objective.metric
    if metric not in known_metrics:
        raise ConfigError(source, "search.objective.metric", f"unknown metric {metric!r}")
    if "." in metric and any(metric.split(".")[0] not in r.config.eval.tasks for r in runs):
        raise ConfigError(source, "search.objective.metric", f"{metric!r} needs its task in eval.tasks of every arm")
    firsts = {r.arm: r for r in runs if r.seed == runs[0].seed}
    for path, space in search.space.items():
        where = f"search.space.{path}"
        parts = path.split(".")
        if path == "train.seed":
            raise ConfigError(source, where, "the pretraining seed is not a hyperparameter (see search.seed)")
        _check_override_keys(nested(parts, None), source, "search.space")
        for value in _search_bounds(space):
            for run in firsts.values():
                trial = deep_merge(run.config.model_dump(mode="json"), nested(parts, value))
                try:
                    validate_run_config(trial, source)
                except ConfigError as err:
                    raise ConfigError(source, where, f"value {value!r} is not accepted: {err.message}") from None
    for index, point in enumerate(search.enqueue):
        unknown = sorted(set(point) - set(search.space))
        if unknown:
            raise ConfigError(source, f"search.enqueue.{index}", f"{', '.join(unknown)} not in search.space")
        for path, value in point.items():
            space = search.space[path]
            inside = (
                value in (space.choices or [])
                if space.type == "categorical"
                else isinstance(value, (int, float)) and space.low <= value <= space.high
            )
            if not inside:
                raise ConfigError(source, f"search.enqueue.{index}.{path}", f"{value!r} is outside the space")
