"""Hyperparameter searches with Optuna, declared in a suite's `search` section.

Every trial is an ordinary run through the shared trainer and evaluator, recorded under
results/<suite>.search/<run-id> and tagged with its study and trial number, so `harness ls`,
`harness report` and the run cache work on trials as on any run. The study lives in an RDB
storage: an SQLite file beside the results by default, or any SQLAlchemy URL (PostgreSQL) so
workers on many machines share one study. Trials of dead workers are detected by heartbeat and
retried; failed or diverged trials are marked failed, never crash the search. A trial that fails
carries its error (user attribute `error`): one failed without it was left by a worker that died, and
`harness search` names it when one of its workers died (exit 1).
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from harness.config import ConfigError, RunConfig, deep_merge, lower_is_better, nested, validate_run_config
from harness.records import RunLock, RunRecord
from harness.suite import ParamSpace, Run, SearchSpec, Suite

SEARCH_SUFFIX = ".search"


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats, retries and the matplotlib plots are marked experimental; they are what we rely on
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def default_storage(out_root: Path, suite: Suite) -> str:
    """The default study storage (an SQLite file in the results root), its folder created."""
    (Path(out_root) / f"{suite.name}{SEARCH_SUFFIX}").mkdir(parents=True, exist_ok=True)
    return default_storage_url(out_root, suite)


def default_storage_url(out_root: Path, suite: Suite) -> str:
    return f"sqlite:///{(Path(out_root) / f'{suite.name}{SEARCH_SUFFIX}' / 'search.db').resolve()}"


def report_dir(out_root: Path, suite: Suite, url: str, report_out: str | Path | None = None) -> Path:
    """Where `harness search` writes its report: `<report_out or <out>/reports/<suite>>/<folder>`. Always
    under the search's own results root by default, never the repository's committed reports/: a
    search's trials are never committed results."""
    base = Path(report_out) if report_out else Path(out_root) / "reports" / suite.name
    return base / report_folder(url, out_root, suite)


def report_folder(url: str, out_root: Path, suite: Suite) -> str:
    """The search report's folder in the suite's report directory: `search` for the default storage
    (the SQLite file in the results root), `search-<backend>-<database>-<hash>` for any other, so
    searches of one suite in different storages (PostgreSQL and SQLite) never overwrite each other's
    report. The hash is of the URL without its password, which never goes into a path."""
    if url == default_storage_url(out_root, suite):
        return "search"
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    digest = hashlib.sha256(shown.encode()).hexdigest()[:8]
    parts = [parsed.get_backend_name(), Path(parsed.database or "").stem, digest]
    return "-".join(["search", *(re.sub(r"[^A-Za-z0-9_.]+", "_", p) for p in parts if p)])


def open_storage(url: str, search: SearchSpec):
    """The study's storage, connected now: an unreachable server or a missing driver is an error
    before any trial starts."""
    optuna = _optuna()
    from sqlalchemy.exc import SQLAlchemyError

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several local workers share the file: wait for its lock instead of failing at once
        kwargs = {"connect_args": {"timeout": 60}}
    else:
        kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=search.heartbeat_s,
            grace_period=search.grace_s,
            heartbeat_stale_trial_callback=retry_callback()(max_retry=search.max_retries),
        )
    except (SQLAlchemyError, ImportError, OSError, ValueError) as err:
        detail = str(err).splitlines()[0]
        if isinstance(err, ImportError) and url.startswith("postgresql"):
            detail += " (the PostgreSQL driver: pip install -e '.[postgres]')"
        raise ConfigError("--storage", url, f"cannot open the study storage: {type(err).__name__}: {detail}") from None


def retry_callback():
    """Optuna 4.9 renamed the callback that retries trials of dead workers."""
    storages = _optuna().storages
    return getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback


def direction(search: SearchSpec) -> str:
    if search.objective.direction:
        return search.objective.direction
    return "minimize" if lower_is_better(search.objective.metric) else "maximize"


def study_names(suite: Suite) -> dict[str, str]:
    """Arm searched -> study name: one study on the baseline arm, or one per arm."""
    search = suite.spec.search
    arms = list(suite.spec.arms)
    if search.per_arm:
        return {arm: f"{suite.name}:{arm}" for arm in arms}
    baseline = suite.spec.baseline or arms[0]
    return {baseline: suite.name}


def _sampler(search: SearchSpec, worker: int):
    optuna = _optuna()
    seed = search.sampler.seed + worker  # workers sharing one seed would propose the same points
    if search.sampler.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.sampler.startup_trials)


def _pruner(search: SearchSpec, expected_reports: int):
    optuna = _optuna()
    spec = search.pruner
    if spec.kind == "none" or not search.report_every_tokens:
        return optuna.pruners.NopPruner()
    if spec.kind == "median":
        # reports are numbered from 1 and Optuna prunes from step n_warmup_steps on
        return optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_reports + 1)
    if spec.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec.min_resource, reduction_factor=spec.reduction_factor
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=spec.min_resource,
        max_resource=max(expected_reports, spec.min_resource + 1),
        reduction_factor=spec.reduction_factor,
    )


def suggest(trial, path: str, space: ParamSpace) -> Any:
    if space.type == "categorical":
        return trial.suggest_categorical(path, list(space.choices))
    if space.type in ("int", "log_int"):
        step = int(space.step or 1)
        return trial.suggest_int(path, int(space.low), int(space.high), step=step, log=space.type == "log_int")
    return trial.suggest_float(path, space.low, space.high, step=space.step, log=space.type == "log_float")


def trial_config(base_run: Run, params: dict[str, Any], search: SearchSpec, source: str) -> dict[str, Any]:
    """The searched arm's config with the trial's values; held-out evaluations placed every
    `report_every_tokens` so every trial reports at the same token counts."""
    raw = base_run.config.model_dump(mode="json")
    for path, value in params.items():
        raw = deep_merge(raw, nested(path.split("."), value))
    if search.report_every_tokens:
        per_step = _nominal_tokens_per_step(validate_run_config(raw, source))
        raw = deep_merge(raw, {"train": {"eval_every": max(1, round(search.report_every_tokens / per_step))}})
    return raw


def _nominal_tokens_per_step(config: RunConfig) -> int:
    """Tokens a step holds: the target, or for a fixed number of sequences, full ones (an upper bound)."""
    train = config.train
    return train.tokens_per_step or train.batch_size * config.data.max_seq_len


@dataclass
class TrialContext:
    suite: Suite
    arm: str
    study_name: str
    base_run: Run
    out_dir: Path
    cache: Any
    device: Any
    worker: int
    log: Callable[[str], None]


def make_objective(ctx: TrialContext) -> Callable[[Any], float]:
    optuna = _optuna()
    from harness.downstream import tasks_to_evaluate
    from harness.runner import RunPruned, evaluate_run, execute_run

    search = ctx.suite.spec.search
    metric = search.objective.metric
    maximize = direction(search) == "maximize"

    def objective(trial) -> float:
        trial.set_user_attr("worker", ctx.worker)
        try:
            return _trial_value(trial)
        except Exception as err:  # a failure its worker saw, unlike one left by a dead worker (dead_worker_trials)
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            raise

    def _trial_value(trial) -> float:
        params = {path: suggest(trial, path, space) for path, space in search.space.items()}
        config = validate_run_config(trial_config(ctx.base_run, params, search, str(ctx.suite.path)), "trial")
        tags = {"study": ctx.study_name, "trial": trial.number}
        run = Run(f"{ctx.suite.name}{SEARCH_SUFFIX}", ctx.arm, ctx.base_run.seed, config, tags)
        run_dir = ctx.out_dir / run.run_id
        trial.set_user_attr("run_id", run.run_id)
        record = RunRecord(run_dir)
        lock = RunLock(run_dir)
        lock.acquire(wait=True)  # another worker may be training this very config: wait, then reuse its result
        try:
            return _objective_value(trial, record, run, run_dir, params)
        finally:
            lock.release()

    def _objective_value(trial, record: RunRecord, run: Run, run_dir: Path, params: dict[str, Any]) -> float:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        config = run.config
        if record.is_done():  # the same model already ran (a retry, the sampler repeating itself, or
            # trials that differ in eval settings alone): evaluated on what its summary lacks for this trial
            tasks = tasks_to_evaluate(config.model_dump(mode="json"), record.summary)
            also = f", evaluating {', '.join(tasks)}" if tasks else ""
            ctx.log(f"trial {trial.number} [{ctx.study_name}] {shown}: reusing finished run {run.run_id}{also}")
            if tasks:
                evaluate_run(run_dir, ctx.device, tasks, log=lambda *_: None, config=config)
            summary = record.summary
        else:
            ctx.log(f"trial {trial.number} [{ctx.study_name}] {shown}: run {run.run_id}")

            def report(row: dict[str, Any]) -> None:
                # evaluations come every eval_every steps, placed at report_every_tokens intervals: the
                # k-th one is report k for every trial. The pruner assumes the study's direction, so a
                # maximised objective gets the negated held-out loss.
                step = row["step"] // config.train.eval_every
                trial.report(-row["heldout_loss"] if maximize else row["heldout_loss"], step)
                if trial.should_prune():
                    raise RunPruned(f"pruned at {row['tokens']:,} tokens, held-out loss {row['heldout_loss']:.4f}")

            try:
                summary = execute_run(
                    run, run_dir, ctx.cache, ctx.device, progress=False, log=lambda *_: None,
                    on_eval=report if search.report_every_tokens else None,
                )  # fmt: skip
            except RunPruned as err:
                ctx.log(f"trial {trial.number}: {err}")
                raise optuna.TrialPruned(str(err)) from None
            except Exception as err:
                ctx.log(f"trial {trial.number}: failed: {type(err).__name__}: {err}")
                raise
        value = summary["metrics"].get(metric)
        if value is None or not math.isfinite(value):
            raise ValueError(f"trial {trial.number}: {metric} is {value} (diverged or not reported)")
        ctx.log(f"trial {trial.number}: {metric} = {value:.4f}")
        return float(value)

    return objective


def counted_trials(study) -> tuple[int, int, int]:
    """(trials that count towards the budget, running now, waiting to run). A trial failed for a
    dead worker's silence does not count: its retry (waiting, then run) does."""
    optuna = _optuna()
    trials = study.get_trials(deepcopy=False)
    retried = {retry_callback().retried_trial_number(t) for t in trials} - {None}
    states = optuna.trial.TrialState
    counted = sum(1 for t in trials if not (t.state == states.FAIL and t.number in retried))
    running = sum(1 for t in trials if t.state == states.RUNNING)
    waiting = sum(1 for t in trials if t.state == states.WAITING)
    return counted, running, waiting


def create_studies(suite: Suite, storage) -> None:
    """Create the suite's studies (or find them) and enqueue the declared first points once."""
    optuna = _optuna()
    search = suite.spec.search
    for name in study_names(suite).values():
        study = optuna.create_study(study_name=name, storage=storage, direction=direction(search), load_if_exists=True)
        for point in search.enqueue:
            study.enqueue_trial(dict(point), skip_if_exists=True)


def work(
    suite: Suite,
    storage,
    out_root: Path,
    device,
    trials: int,
    timeout_s: float | None,
    worker: int = 0,
    log: Callable[[str], None] = print,
) -> None:
    """One worker: take trials of each study until the study holds `trials` of them (all workers
    together), then wait for trials still running elsewhere so a dead worker's trial is retried."""
    optuna = _optuna()
    from harness.data.cache import StageCache

    search = suite.spec.search
    cache = StageCache(Path(out_root) / "_cache")
    out_dir = Path(out_root) / f"{suite.name}{SEARCH_SUFFIX}"
    first_seed = search.seed if search.seed is not None else suite.spec.seeds[0]
    deadline = time.monotonic() + timeout_s if timeout_s else None
    for arm, name in study_names(suite).items():
        base_run = next(r for r in suite.runs if r.arm == arm)
        base_run = Run(base_run.suite, arm, first_seed, base_run.config.model_copy(
            update={"train": base_run.config.train.model_copy(update={"seed": first_seed})}))  # fmt: skip
        expected = _expected_reports(base_run, search)
        study = optuna.load_study(
            study_name=name, storage=storage, sampler=_sampler(search, worker), pruner=_pruner(search, expected)
        )
        ctx = TrialContext(suite, arm, name, base_run, out_dir, cache, device, worker, log)
        objective = make_objective(ctx)
        while deadline is None or time.monotonic() < deadline:
            optuna.storages.fail_stale_trials(study)
            counted, running, waiting = counted_trials(study)
            if counted >= trials and not waiting:
                if not running:
                    break
                time.sleep(min(search.heartbeat_s, 5))  # a running trial may belong to a dead worker
                continue
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)


def _expected_reports(base_run: Run, search: SearchSpec) -> int:
    if not search.report_every_tokens:
        return 1
    train = base_run.config.train
    total = train.token_budget or (train.steps or 1) * _nominal_tokens_per_step(base_run.config)
    return max(1, total // search.report_every_tokens)


def spawn_workers(argv: list[str], workers: int) -> list[int]:
    """Run `workers` copies of this search as separate processes (worker k = --worker-index k) and
    wait for all; returns their exit statuses, worker by worker (negative: killed by that signal)."""
    processes = [
        subprocess.Popen([sys.executable, "-m", "harness", *argv, "--worker-index", str(k)]) for k in range(workers)
    ]
    try:
        return [p.wait() for p in processes]
    except KeyboardInterrupt:
        for p in processes:
            p.terminate()
        raise


def how_it_ended(code: int) -> str:
    """A process's exit status in words: "killed by SIGKILL", "exited with status 1"."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def dead_worker_trials(suite: Suite, storage, worker: int, since: datetime) -> list[str]:
    """What became of the trials worker `worker` left unfinished when it died (those it started since
    `since`): one line each. A trial its worker saw fail carries an `error` and is not one of them."""
    optuna = _optuna()
    states = optuna.trial.TrialState
    lines = []
    for name in study_names(suite).values():
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        retries = {retry_callback().retry_history(t)[-1]: t for t in trials if retry_callback().retry_history(t)}
        for trial in trials:
            attrs = trial.user_attrs
            if attrs.get("worker") != worker or "error" in attrs or trial.state not in (states.RUNNING, states.FAIL):
                continue
            if trial.datetime_start is not None and trial.datetime_start >= since:
                lines.append(_left_trial(trial, name, retries.get(trial.number), suite.spec.search))
    return lines


def _left_trial(trial, study: str, retry, search: SearchSpec) -> str:
    """A dead worker's trial in words: which it is, its state now, and its retry if any."""
    what = f"trial {trial.number} of study {study} (run {trial.user_attrs.get('run_id', 'not yet named')})"
    if trial.state == _optuna().trial.TrialState.RUNNING:
        return f"{what}: left RUNNING; `harness search` again retries it once it has been silent {search.grace_s}s"
    if retry is not None:
        return f"{what}: FAIL (its worker went silent); retried as trial {retry.number}, {retry.state.name}"
    return f"{what}: FAIL (its worker went silent); not retried (max_retries {search.max_retries} reached)"


# ------------------------------------------------------------------------------ after a search


def best_suite(suite: Suite, best: dict[str, dict[str, Any]], overrides: list[str]) -> dict[str, Any]:
    """A ready-to-run suite: the original with each study's best values written in (into `base`
    for one study, into each arm for per-arm studies) and no search section."""
    from harness.config import parse_set

    raw = yaml.safe_load(suite.path.read_text(encoding="utf-8"))
    raw = copy.deepcopy(raw)
    raw.pop("search", None)
    raw["name"] = f"{suite.name}-tuned"
    cli: dict[str, Any] = {}
    for assignment in overrides:  # the search ran with these; the tuned suite must too
        parts, value = parse_set(assignment)
        cli = deep_merge(cli, nested(parts, value))
    raw["base"] = deep_merge(raw.get("base") or {}, cli)
    tuned = {}
    for arm, params in best.items():
        tree: dict[str, Any] = {}
        for path, value in params.items():
            tree = deep_merge(tree, nested(path.split("."), value))
        tuned[arm] = tree
    if suite.spec.search.per_arm:
        for arm, tree in tuned.items():
            raw["arms"][arm] = deep_merge(raw["arms"].get(arm) or {}, tree)
    else:
        raw["base"] = deep_merge(raw["base"], next(iter(tuned.values())))
    metric = suite.spec.search.objective.metric
    raw["description"] = (
        f"{raw.get('description', '').strip()} Tuned by `harness search` on {metric}: "
        + "; ".join(f"{arm}: " + ", ".join(f"{k}={v}" for k, v in p.items()) for arm, p in best.items())
    ).strip()
    return raw


def write_search_report(suite: Suite, storage, out_dir: Path, overrides: list[str]) -> list[str]:
    """trials.csv, best-suite.yaml, plots and search.md for every study of the suite; returns lines to print."""
    optuna = _optuna()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    search = suite.spec.search
    metric = search.objective.metric
    lines = [f"# Search: {suite.name}", "", f"Objective: {direction(search)} `{metric}`.", ""]
    matrix: list[str] = []  # the answer first: one row per study, with what can and cannot be claimed
    printed: list[str] = []
    best: dict[str, dict[str, Any]] = {}
    for arm, name in study_names(suite).items():
        study = optuna.load_study(study_name=name, storage=storage)
        frame = study.trials_dataframe()
        slug = name.replace(":", "-")
        frame.to_csv(out_dir / f"trials-{slug}.csv", index=False)
        states = frame["state"].value_counts().to_dict() if len(frame) else {}
        counts = ", ".join(f"{v} {k}" for k, v in states.items())
        lines += [f"## Study `{name}` (arm {arm})", "", f"Trials: {counts}.", ""]
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not completed:
            matrix.append(f"| `{name}` | – | – | no trial completed: no best setting |")
            lines += ["No trial completed: no best setting.", ""]
            printed.append(f"{name}: no trial completed")
            continue
        trial = study.best_trial
        best[arm] = dict(trial.params)
        shown = ", ".join(f"`{k}` = {v:.4g}" if isinstance(v, float) else f"`{k}` = {v}" for k, v in best[arm].items())
        run_id = trial.user_attrs.get("run_id")
        lines += [f"Best: trial {trial.number}, {metric} = {trial.value:.4f} with {shown} (run {run_id}).", ""]
        matrix.append(
            f"| `{name}` | {shown} | {trial.value:.4f} | not testable: each trial is one run at one pretraining seed, "
            "so the best trial's margin over the others has no seed spread to test against; run the tuned suite "
            "over several seeds beside the starting setting to test it |"
        )
        printed.append(f"{name}: best trial {trial.number}: {metric} = {trial.value:.4f} ({shown.replace('`', '')})")
        figures = {
            "history": lambda s=study: plots.plot_optimization_history(s),
            "intermediate": lambda s=study: plots.plot_intermediate_values(s),
            "slice": lambda s=study: plots.plot_slice(s),
            "parallel": lambda s=study: plots.plot_parallel_coordinate(s),
            "importances": lambda s=study: plots.plot_param_importances(s),
        }
        for kind, draw in figures.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    drawn = draw()
            except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. importances of one trial
                lines += [f"({kind}: not drawn: {err})", ""]
                continue
            axes = drawn if hasattr(drawn, "figure") else drawn.flat[0]
            figure = axes.figure
            if kind == "intermediate":  # Optuna's labels say "Step" and "Intermediate Value": give units
                axes.set_xlabel(f"report (one every {search.report_every_tokens or 0:,} training tokens)")
                negated = ", negated" if direction(search) == "maximize" else ""
                axes.set_ylabel(f"held-out MLM loss (nats/masked token{negated})")
            elif kind == "history":
                axes.set_xlabel("trial")
                axes.set_ylabel(metric)
            stem = f"{slug}-{kind}"
            for fmt in ("png", "svg"):
                figure.savefig(out_dir / f"{stem}.{fmt}", dpi=120, bbox_inches="tight")
            plt.close(figure)
            lines += [f"![{kind}]({stem}.png)", ""]
        overriding = [a for a in suite.spec.arms if not search.per_arm and _arm_sets_any(suite, a, trial.params)]
        if overriding:
            note = f"Note: arm(s) {', '.join(overriding)} set a searched key themselves and keep their own value."
            lines += [note, ""]
    if best:
        tuned = best_suite(suite, best, overrides)
        (out_dir / "best-suite.yaml").write_text(yaml.safe_dump(tuned, sort_keys=False), encoding="utf-8")
        lines += ["The tuned suite: [best-suite.yaml](best-suite.yaml) (`harness run` it as it is).", ""]
        printed.append(f"tuned suite: {out_dir / 'best-suite.yaml'}")
    header = ["| study | best setting | best " + metric + " | verdict |", "|---|---|---|---|", *matrix, ""]
    lines[2:2] = header  # right under the title
    (out_dir / "search.md").write_text("\n".join(lines), encoding="utf-8")
    printed.append(f"search report: {out_dir / 'search.md'}")
    return printed


def _arm_sets_any(suite: Suite, arm: str, params: dict[str, Any]) -> bool:
    from harness.config import has_path

    override = suite.spec.arms.get(arm) or {}
    return any(has_path(override, path) for path in params)
