"""Run records on disk -> pandas tables: runs, tidy metrics, training curves, fine-tuning seeds.

Reading never stops at a bad record. Each problem (a corrupt or half-written file, a record from
another schema version, a metric that is not a number) is collected with the file named, and the
rest is read. Runs a suite expects but that have no finished record stay in the tables as
`missing`, `pending`, `running`, `failed` or `damaged` (a summary that fails the check written with
it: harness/integrity.py), never silently dropped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import ConfigError
from harness.downstream import tasks_to_evaluate
from harness.integrity import header_problem, prediction_problems, status_problem, summary_problem
from harness.records import SCHEMA_VERSION, atomic_write_json, is_json_number, read_jsonl, read_record
from harness.suite import Suite, SuiteSpec, load_suite

MANIFEST = "suite.json"
CURVE_METRICS = ("train_loss", "heldout_loss", "heldout_ppl", "heldout_acc", "heldout_bpb", "nsp_loss")


def write_manifest(suite_dir: Path, suite: Suite, overrides: list[str]) -> None:
    """What a results directory needs to be reported on without the suite file: arm order, seeds,
    metrics, baseline and comparisons (`harness report results/<suite>`)."""
    atomic_write_json(
        Path(suite_dir) / MANIFEST,
        {
            "schema_version": SCHEMA_VERSION,
            "source": str(suite.path),
            "overrides": list(overrides),
            "spec": suite.spec.model_dump(mode="json"),
        },
    )


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"model.layers": 4, ...}; lists become JSON text so every cell is a scalar."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        elif isinstance(value, list):
            flat[path] = json.dumps(value)
        else:
            flat[path] = value
    return flat


@dataclass
class SuiteSource:
    """One suite as the report sees it: its spec (when known), its results directory and the
    run id each (arm, seed) must have (when read from the suite file)."""

    name: str
    directory: Path
    spec: SuiteSpec | None = None
    expected: dict[tuple[str, int], str] = field(default_factory=dict)
    configs: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)


@dataclass
class Results:
    runs: pd.DataFrame  # one row per (suite, arm, seed): state, error, budget, flattened config
    metrics: pd.DataFrame  # tidy: one row per finished run x metric, config beside it
    curves: pd.DataFrame  # one row per logged step x metric of each run
    finetune: pd.DataFrame  # one row per run x task metric x fine-tuning seed
    sources: list[SuiteSource]
    problems: list[str] = field(default_factory=list)  # bad records, named
    notes: list[str] = field(default_factory=list)  # things worth knowing that are not errors
    floors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FLOOR_COLUMNS))  # per run x metric

    @property
    def multi_suite(self) -> bool:
        return len(self.sources) > 1

    def arms(self) -> list[str]:
        return list(dict.fromkeys(self.runs["arm"])) if len(self.runs) else []


def _label(source: SuiteSource, arm: str, multi: bool) -> str:
    return f"{source.name}/{arm}" if multi else arm


class _Reader:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def json_file(self, path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        data, problem = read_record(path)
        if problem is not None:
            self.problems.append(f"{path}: {problem}")
        return data

    def jsonl_file(self, path: Path) -> list[dict[str, Any]]:
        def report(number: int) -> None:
            self.problems.append(f"{path}: line {number} is not valid JSON (half-written?): skipped")

        return read_jsonl(path, report)


def _number(value: Any) -> float | None:
    return float(value) if is_json_number(value) else None


def _as_written(value: Any) -> int | float | None:
    """A number as the record holds it (an int stays an int); None for anything else."""
    return value if _number(value) is not None else None


def source_from_suite(suite: Suite, results_root: Path) -> SuiteSource:
    """A loaded suite: its runs are expected under results_root/<name>, by run id."""
    return SuiteSource(
        name=suite.name,
        directory=Path(results_root) / suite.name,
        spec=suite.spec,
        expected={(r.arm, r.seed): r.run_id for r in suite.runs},
        configs={(r.arm, r.seed): r.config.model_dump(mode="json") for r in suite.runs},
    )


def _source_from_suite_file(path: Path, results_root: Path, overrides: list[str]) -> SuiteSource:
    return source_from_suite(load_suite(path, overrides=overrides), results_root)


def _manifest_spec(directory: Path, reader: _Reader) -> SuiteSpec | None:
    manifest = reader.json_file(directory / MANIFEST)
    if manifest is None:
        return None
    try:
        return SuiteSpec.model_validate(manifest["spec"])
    except Exception as err:  # a manifest from another version: report without it
        reader.problems.append(f"{directory / MANIFEST}: not a suite manifest this version reads ({err})")
        return None


def _sources_from_directory(directory: Path, reader: _Reader) -> list[SuiteSource]:
    """A suite's results directory, or a results root holding several suites: every directory
    with run directories (`<run-id>/config.json`) in it is a suite, named by its manifest or, without
    one, by the directory (`harness run` files runs under <out>/<suite name>/)."""
    suite_dirs = sorted(
        {p.parent.parent for p in directory.glob("**/config.json") if "_cache" not in p.relative_to(directory).parts}
    )
    sources = []
    for suite_dir in suite_dirs or [directory]:
        spec = _manifest_spec(suite_dir, reader)
        sources.append(SuiteSource(spec.name if spec else suite_dir.name, suite_dir, spec))
    return sources


def resolve_sources(
    sources: list[str | Path], results_root: Path, overrides: list[str] = (), problems: list[str] | None = None
) -> list[SuiteSource]:
    """Each argument of `harness report`: a suite YAML file (its runs are looked up under
    results_root/<name>) or a results directory. Unreadable manifests are added to `problems`."""
    reader = _Reader()
    if problems is not None:
        reader.problems = problems
    resolved: list[SuiteSource] = []
    for source in sources:
        path = Path(source)
        if path.is_file():
            resolved.append(_source_from_suite_file(path, results_root, list(overrides)))
        elif path.is_dir():
            resolved.extend(_sources_from_directory(path, reader))
        else:
            raise ConfigError(str(path), "", "neither a suite file nor a results directory")
    names = [s.name for s in resolved]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(", ".join(map(str, sources)), "", f"suite {', '.join(duplicated)} given more than once")
    return resolved


def _pick(candidates: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Of several records for one (arm, seed) (the suite was edited between runs), the finished
    one written last wins; the rest are superseded."""
    ranked = sorted(candidates, key=lambda r: (r["state"] == "done", r["time"]), reverse=True)
    return ranked[0], ranked[1:]


RUN_COLUMNS = ["suite", "arm", "seed", "run_id", "metric", "value"]
CURVE_COLUMNS = ["suite", "arm", "seed", "run_id", "step", "tokens", "metric", "value"]
FINETUNE_COLUMNS = ["suite", "arm", "seed", "run_id", "task", "metric", "finetune_seed", "value", "diverged"]
FLOOR_COLUMNS = ["suite", "arm", "seed", "run_id", "metric", "floor", "threshold", "kind"]
CORRELATIONS = ("matthews", "pearson", "spearman")  # a constant predictor scores 0 on these


def _floor_rows(base: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per metric of a finished run: the score of a predictor that has learned nothing useful, and
    the threshold a result must pass to be told apart from it (two standard errors).

    Downstream: the majority-class baseline of the dev set (the binomial standard error of a
    proportion on `dev_examples`; 1/sqrt(n) for correlations). Held out: the context-free unigram
    floor of harness/references.py, in each held-out metric's own units."""
    rows = []

    def add(metric: str, floor: float, threshold: float, kind: str) -> None:
        if math.isfinite(floor) and math.isfinite(threshold):
            rows.append({**base, "metric": metric, "floor": floor, "threshold": threshold, "kind": kind})

    for task, result in summary.get("downstream", {}).items():
        baselines = result.get("majority_baseline") or {}
        dev = _number(result.get("dev_examples")) or 0
        if dev <= 0:
            continue
        for metric in result.get("metrics", {}):
            value = _number(baselines.get(metric))
            if value is None and metric in CORRELATIONS:
                value = 0.0
            if value is None:
                continue
            if metric in CORRELATIONS:
                error = 1 / math.sqrt(dev)
            elif 0 <= value <= 1:
                error = math.sqrt(value * (1 - value) / dev)
            else:
                continue  # a baseline outside [0, 1] (an error measure): no binomial noise to speak of
            add(f"{task}.{metric}", value, value + 2 * error, "majority class")
    refs = {k: _number(v) for k, v in (summary.get("references") or {}).items()}
    for held in ("heldout", "heldout_own"):  # the FULL-SENTENCES yardstick, then the run's own format
        loss, noise = refs.get(f"{held}_unigram_loss"), refs.get(f"{held}_loss_noise")
        if loss is None or noise is None:
            continue
        add(f"{held}_loss", loss, loss - noise, "unigram")
        add(f"{held}_ppl", math.exp(min(loss, 50.0)), math.exp(min(loss - noise, 50.0)), "unigram")
        acc, masked = refs.get(f"{held}_unigram_acc"), refs.get(f"{held}_masked")
        if acc is not None and masked:
            add(f"{held}_acc", acc, acc + 2 * math.sqrt(acc * (1 - acc) / masked), "unigram")
        bpb, masked_bytes = refs.get(f"{held}_unigram_bpb"), refs.get(f"{held}_masked_bytes")
        if bpb is not None and masked and masked_bytes:
            add(f"{held}_bpb", bpb, bpb - noise * masked / math.log(2) / masked_bytes, "unigram")
    return rows


@dataclass
class _Rows:
    """The rows of the four tables as records are read, with what was noticed on the way."""

    reader: _Reader
    runs: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    finetune: list[dict[str, Any]] = field(default_factory=list)
    floors: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def missing(self, base: dict[str, Any], run_id: str, config: dict[str, Any]) -> None:
        config_cols = {f"config.{k}": v for k, v in flatten(config).items()}
        self.runs.append({**base, "run_id": run_id, "state": "missing", "error": "", **config_cols})

    def record(self, base: dict[str, Any], record: dict[str, Any]) -> None:
        base = {**base, "run_id": record["run_id"]}
        config_cols = {f"config.{k}": v for k, v in flatten(record["config"]).items()}
        summary = record["summary"] or {}
        budget = summary.get("budget", {})
        self.runs.append(
            {
                **base,
                "state": record["state"],
                "error": record["error"],
                # numbers only (anything else is left blank): a summary is read, not trusted
                "tokens": _as_written(budget.get("tokens")),
                "steps": _as_written(budget.get("steps")),
                "epochs": _as_written(budget.get("epochs")),
                "wall_s": _as_written(summary.get("wall_s")),
                # > 0: wall_s is the last sitting's alone (the run resumed from a checkpoint at this step)
                "resumed_from_step": _as_written(summary.get("resumed_from_step")),
                "format_copies": _format_copies(summary),
                "time": record["time"],  # of the status last written
                "directory": str(record["dir"]),
                **config_cols,
            }
        )
        if record["state"] == "done":
            self._metrics(base, record, summary, config_cols)
            self.finetune.extend(_finetune_rows(base, summary.get("downstream", {})))
            self.floors.extend(_floor_rows(base, summary))
        for row in record["curve"]:
            step, tokens = _number(row.get("step")), _number(row.get("tokens"))
            if step is None or tokens is None:
                continue
            for metric in CURVE_METRICS:
                value = _number(row.get(metric))
                if value is not None and math.isfinite(value):
                    self.curves.append({**base, "step": step, "tokens": tokens, "metric": metric, "value": value})

    def _metrics(self, base: dict[str, Any], record: dict[str, Any], summary: dict[str, Any], config_cols) -> None:
        for metric, raw in summary.get("metrics", {}).items():
            value = _number(raw)
            if value is None:
                where = record["dir"] / "summary.json"
                self.reader.problems.append(f"{where}: metric {metric} = {raw!r} is not a number: left out")
            elif not math.isfinite(value):
                self.notes.append(
                    f"{base['arm']} seed {base['seed']}: {metric} is {value} (diverged?): left out of statistics"
                )
            else:
                self.metrics.append({**base, "metric": metric, "value": value, **config_cols})


def _format_copies(summary: dict[str, Any]) -> int | None:
    """How many copies of the training split a finished run was packed into: static masking's copies
    of a pair format each have their own stage (`format_copy_<c>`); None when the summary has no keys."""
    keys = summary.get("stage_keys")
    if not isinstance(keys, dict) or "format" not in keys:
        return None
    return 1 + sum(str(name).startswith("format_copy_") for name in keys)


def load_results(sources: list[SuiteSource], problems: list[str] | None = None) -> Results:
    """Read every record of the sources; `problems` found earlier (resolving sources) are kept."""
    reader = _Reader()
    reader.problems = list(problems or [])
    rows = _Rows(reader)
    multi = len(sources) > 1
    for source in sources:
        records = _read_records(source.directory, reader)
        if not records:
            reader.problems.append(
                f"{source.directory}: no run records (expected <run-id>/config.json under it); "
                f"has `harness run` been run with this results root?"
            )
        if source.expected:
            wanted = set(source.expected.values())
            stray = [r for r in records if r["run_id"] not in wanted]
            if stray:
                rows.notes.append(
                    f"{source.name}: {len(stray)} record(s) under {source.directory} are not runs of the suite as "
                    f"now written (edited since they ran, or other --set overrides): not included"
                )
            records = [r for r in records if r["run_id"] in wanted]
        by_cell: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for record in records:
            by_cell.setdefault((record["arm"], record["seed"]), []).append(record)
        arms, seeds = _grid(source, records)
        for arm in arms:
            for seed in seeds:
                base = {"suite": source.name, "arm": _label(source, arm, multi), "seed": seed}
                candidates = by_cell.get((arm, seed), [])
                if not candidates:
                    rows.missing(base, source.expected.get((arm, seed), ""), source.configs.get((arm, seed), {}))
                    continue
                record, superseded = _pick(candidates)
                if superseded:
                    rows.notes.append(
                        f"{source.name} {arm} seed {seed}: {len(superseded)} older record(s) superseded by "
                        f"{record['run_id']} ({', '.join(r['run_id'] for r in superseded)})"
                    )
                rows.record(base, record)
                config = source.configs.get((arm, seed))
                if config is not None and record["state"] == "done":
                    lacking = tasks_to_evaluate(config, record["summary"])
                    if lacking:
                        rows.notes.append(
                            f"{source.name} {arm} seed {seed}: {', '.join(lacking)} not evaluated as the suite now "
                            "asks (another task definition, protocol or fine-tuning seeds): `harness run` evaluates it"
                        )

    runs = pd.DataFrame(rows.runs)
    if len(runs):
        for column in ("tokens", "steps", "epochs", "wall_s", "resumed_from_step"):
            if column not in runs:
                runs[column] = math.nan
    metrics = pd.DataFrame(rows.metrics, columns=None if rows.metrics else RUN_COLUMNS)
    curves = pd.DataFrame(rows.curves, columns=None if rows.curves else CURVE_COLUMNS)
    finetune = pd.DataFrame(rows.finetune, columns=None if rows.finetune else FINETUNE_COLUMNS)
    floors = pd.DataFrame(rows.floors, columns=FLOOR_COLUMNS)
    if multi and len(metrics):
        per_suite = metrics.groupby("suite")["metric"].agg(set)
        shared = set.intersection(*per_suite)
        for suite_name, names in per_suite.items():
            only = sorted(names - shared)
            if only:
                rows.notes.append(
                    f"{suite_name}: metric(s) {', '.join(only)} not reported by every suite: not compared across suites"
                )
    return Results(runs, metrics, curves, finetune, sources, reader.problems, rows.notes, floors)


def _grid(source: SuiteSource, records: list[dict[str, Any]]) -> tuple[list[str], list[int]]:
    """Arms and seeds to show: the suite's own, in its order (its controls after its arms), then any
    others the records hold."""
    spec_arms = [*source.spec.arms, *source.spec.control_sources()] if source.spec else []
    arms = list(dict.fromkeys([*spec_arms, *sorted(r["arm"] for r in records if r["arm"] not in spec_arms)]))
    spec_seeds = list(source.spec.seeds) if source.spec else []
    seeds = list(dict.fromkeys([*spec_seeds, *sorted({r["seed"] for r in records} - set(spec_seeds))]))
    return arms, seeds


def _finetune_rows(base: dict[str, Any], downstream: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for task, result in downstream.items():
        for metric, detail in result.get("metrics", {}).items():
            for finetune_seed, value in detail.get("seeds", {}).items():
                number = _number(value)
                if number is not None and _is_seed(finetune_seed):
                    rows.append({**base, "task": task, "metric": metric, "finetune_seed": int(finetune_seed),
                                 "value": number, "diverged": ""})  # fmt: skip
        for finetune_seed, reason in result.get("diverged_seeds", {}).items():
            if _is_seed(finetune_seed):
                rows.append({**base, "task": task, "metric": "", "finetune_seed": int(finetune_seed),
                             "value": math.nan, "diverged": str(reason)})  # fmt: skip
    return rows


def _is_seed(key: str) -> bool:
    """A fine-tuning seed as a summary keys it ("0", "-1"); anything else is not a seed row."""
    return key.lstrip("-").isdecimal()


def _read_records(directory: Path, reader: _Reader) -> list[dict[str, Any]]:
    records = []
    for config_path in sorted(Path(directory).glob("*/config.json")):
        run_dir = config_path.parent
        header = reader.json_file(config_path)
        if header is None:
            continue  # the reader named the file
        if header.get("schema_version") != SCHEMA_VERSION:
            reader.problems.append(
                f"{config_path}: written by record schema {header.get('schema_version')}, this version reads "
                f"{SCHEMA_VERSION}: skipped"
            )
            continue
        missing = [k for k in ("suite", "arm", "seed", "config") if k not in header]
        if missing:
            reader.problems.append(f"{config_path}: lacks {', '.join(missing)}: skipped")
            continue
        wrong = header_problem(header)
        if wrong:
            reader.problems.append(f"{run_dir}/{wrong}: skipped")
            continue
        status = reader.json_file(run_dir / "status.json") or {}
        state = status.get("state", "unknown")
        error = str(status.get("error", ""))  # failed, diverged, pruned: why
        summary = None
        if not isinstance(state, str):
            state, error = "damaged", str(status_problem(status))
            reader.problems.append(f"{run_dir}/{error}")
        elif state == "unknown":
            error = "status.json missing or unreadable"
        elif state == "done":
            damage = summary_problem(run_dir, status)  # against the check written with it
            if damage is None:
                summary = reader.json_file(run_dir / "summary.json")
                for task, problem in prediction_problems(run_dir, summary or {}).items():
                    reader.problems.append(
                        f"{run_dir}/{problem}: left out of {task}'s multi-bootstrap (`harness run` evaluates it again)"
                    )
            else:  # never counted as done: `harness run` runs it again
                state, error = "damaged", damage
                reader.problems.append(f"{run_dir}/{damage}: the run is not counted as done")
        records.append(
            {
                "dir": run_dir,
                "run_id": header.get("run_id", run_dir.name),
                # a search's trials share arm and seed: each trial is its own row
                "arm": f"{header['arm']}#trial-{header['trial']}" if "trial" in header else str(header["arm"]),
                "seed": int(header["seed"]),
                "config": header["config"],
                "state": state,
                "time": str(status.get("time", "")),
                "error": error,
                "summary": summary,
                "curve": reader.jsonl_file(run_dir / "metrics.jsonl"),
            }
        )
    return records
