"""Ablations that change nothing: arms whose configs differ but whose training does not.

Static masking (harness/data/masking.py) serves a sequence the mask drawn from (seed, epoch mod
dupe_factor, index), dynamic masking the one drawn from (seed, epoch, index); the order of the
sequences depends on (seed, epoch) alone. While training stays within its first `dupe_factor`
passes over the data, every epoch served is below dupe_factor, so `epoch mod dupe_factor == epoch`
and static masking draws exactly dynamic masking's masks: the two arms train bit-identical models.
Static masking differs only from pass dupe_factor + 1 on, when the first mask comes round again.
Where the format packs each static copy anew (segment and sentence pairs, harness/data/pipeline.py),
the copies differ in segmentation from the second pass on: there static masking trains as dynamic
masking only within one pass, and beyond it, while it repeats no mask, differs in segmentation only.

The check (`find_ineffective`) is a pure function: the arms' resolved configs and their passes over
the data in, warnings out. `harness run` and `harness data` feed it planned passes (`arm_plans`,
from the prepared data), the report the passes the runs made (from their records).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.config import MaskingConfig, RunConfig, pretraining_part

if TYPE_CHECKING:
    from harness.suite import Suite

# what masking settings the trainer never reads: dupe_factor under dynamic masking
UNREAD_UNDER_DYNAMIC = ("dupe_factor",)
# what a random-init control reads of its train settings: the seed (its initialisation), the precision (its
# evaluations) and the flag that makes it a control; it reads no masking setting either, since the held-out
# mask is the evaluation's own (eval.mask_seed)
CONTROL_READS_TRAIN = ("seed", "precision", "pretrain")
DEFAULT_DUPE = MaskingConfig.model_fields["dupe_factor"].default


@dataclass(frozen=True)
class ArmPlan:
    """One arm as far as its training goes: its resolved config (`RunConfig.model_dump(mode="json")`)
    and its passes over the training data, planned or made (None: not known, e.g. data not built)."""

    config: dict[str, Any]
    passes: float | None = None
    tokens_per_pass: float | None = None  # training tokens in one pass, when known
    planned: bool = True  # the passes are planned (before training), not made (from records)
    # copies of the training split its runs were packed into (from records: 1 for runs made before
    # static copies of a pair format were packed anew); None: as the format and this code decide
    format_copies: int | None = None


@dataclass(frozen=True)
class Ineffective:
    """Arms whose comparison measures nothing (or, with `certain` False, may measure nothing), and why."""

    arms: tuple[str, ...]
    reason: str
    certain: bool = True

    def message(self) -> str:
        if len(self.arms) == 1:
            return f"arm {self.arms[0]}: {self.reason}"
        verb = "train on identical data and masks" if self.certain else "may train on identical data and masks"
        return f"arms {_listed(self.arms)} {verb}: {self.reason}"

    def names(self, arm: str, baseline: str) -> bool:
        """Whether this warning is about the comparison of `arm` with `baseline`."""
        return arm in self.arms and baseline in self.arms


def planned_passes(config: RunConfig, train_sequences: int, train_tokens: int) -> float:
    """Passes over the training data the run will make, as harness/runner.py's plan counts them:
    steps (`train.steps`, or the token budget over the tokens per step, as harness.train.planned_steps)
    times the sequences per step over the training sequences."""
    train = config.train
    if train.pretrain is False or train_sequences <= 0 or train_tokens <= 0:
        return 0.0
    per_step = train.tokens_per_step or train.batch_size * train_tokens / train_sequences
    steps = train.steps if train.steps is not None else max(1, math.ceil(train.token_budget / per_step))
    if train.batch_size is not None:  # whole sequences per step: the count is exact
        return steps * train.batch_size / train_sequences
    return steps * per_step / train_tokens


def static_repeats_nothing(config: dict[str, Any], passes: float | None) -> bool:
    """Static masking that never serves a mask twice: at most dupe_factor passes over the data."""
    masking = config.get("masking") or {}
    if masking.get("kind") != "static" or passes is None:
        return False
    return passes <= masking.get("dupe_factor", DEFAULT_DUPE)


def passes_as_dynamic(config: dict[str, Any], format_copies: int | None = None) -> float:
    """How many passes static masking serves exactly what dynamic masking serves: dupe_factor, or
    one where each copy is packed anew (its second copy is cut into other sequences)."""
    from harness.data.formats import SEEDED_FORMATS

    dupe = (config.get("masking") or {}).get("dupe_factor", DEFAULT_DUPE)
    if format_copies is None:
        anew = (config.get("data") or {}).get("format") in SEEDED_FORMATS
    else:
        anew = format_copies > 1
    return 1 if dupe > 1 and anew else dupe


def static_trains_as_dynamic(config: dict[str, Any], passes: float | None, format_copies: int | None = None) -> bool:
    """Static masking whose batches are dynamic masking's, bit for bit, over the planned passes."""
    return static_repeats_nothing(config, passes) and passes <= passes_as_dynamic(config, format_copies)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """What decides the trained model, the run seed aside (arms are compared seed for seed)."""
    part = copy.deepcopy(pretraining_part(config))
    (part.get("train") or {}).pop("seed", None)
    return part


def effective_part(config: dict[str, Any], passes: float | None, format_copies: int | None = None) -> dict[str, Any]:
    """`_comparable` with masking as the trainer realises it: static masking that repeats no mask is
    dynamic masking, and dynamic masking ignores dupe_factor."""
    part = _comparable(config)
    masking = part.get("masking") or {}
    if static_trains_as_dynamic(config, passes, format_copies):
        masking["kind"] = "dynamic"
    if masking.get("kind") == "dynamic":
        for key in UNREAD_UNDER_DYNAMIC:
            masking.pop(key, None)
    return part


def is_false(value: Any) -> bool:
    """False itself, as a config holds it or a pandas column of records gives it back (numpy's bool)."""
    return value is False or (isinstance(value, np.bool_) and not value)


def reads_setting(key: str, masking_kind: Any, pretrain: Any) -> bool:
    """Whether a run whose masking.kind and train.pretrain are these reads the setting `key` (dotted,
    e.g. "masking.dupe_factor"): a setting it never reads cannot make a difference to it."""
    section, _, name = key.partition(".")
    if is_false(pretrain):
        if section == "masking" or (section == "train" and name not in CONTROL_READS_TRAIN):
            return False
    return not (section == "masking" and masking_kind == "dynamic" and name in UNREAD_UNDER_DYNAMIC)


def _static(config: dict[str, Any]) -> bool:
    return (config.get("masking") or {}).get("kind") == "static"


def _pretrains(config: dict[str, Any]) -> bool:
    return (config.get("train") or {}).get("pretrain") is not False


def _listed(names: tuple[str, ...] | list[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _passes_text(plan: ArmPlan) -> str:
    return f"{plan.passes:.2f} {'planned ' if plan.planned else ''}passes"


def _remedy(dupe: float, plan: ArmPlan) -> str:
    unit = "pass" if dupe == 1 else "passes"
    longer = f"train for more than {dupe:g} {unit}"
    if plan.tokens_per_pass:
        tokens, about = plan.tokens_per_pass, "" if plan.planned else "~"  # from records: tokens seen / passes
        longer = (
            f"train on more than {about}{dupe * tokens:,.0f} tokens ({dupe:g} x the {about}{tokens:,.0f} "
            "training tokens)"
        )
    fewer = f", or lower dupe_factor below {plan.passes:.2f}" if plan.passes > 1 else ""
    return f"static masking departs from dynamic only after {dupe:g} {unit}: {longer} or on a smaller corpus{fewer}"


def _static_reason(statics: list[tuple[str, ArmPlan]]) -> str:
    """Why static masking of these arms repeats no mask, with what would make it differ."""
    arm, plan = statics[0]
    dupes = {name: (p.config.get("masking") or {}).get("dupe_factor", DEFAULT_DUPE) for name, p in statics}
    if len(statics) == 1:
        setting = f"static masking with dupe_factor {dupes[arm]:g}"
    else:
        setting = "static masking (" + "; ".join(f"{n}: dupe_factor {d:g}" for n, d in dupes.items()) + ")"
    least = min(dupes.values())
    reason = (
        f"{setting} at {_passes_text(plan)} over the training data (≤ {least:g}) never serves a mask twice: pass e "
        f"(from 0) serves mask e mod dupe_factor = e, the very mask dynamic masking draws for pass e"
    )
    if all(static_trains_as_dynamic(p.config, p.passes, p.format_copies) for _, p in statics):
        least_as_dynamic = min(passes_as_dynamic(p.config, p.format_copies) for _, p in statics)
        return f"{reason}; {_remedy(least_as_dynamic, plan)}"
    return f"{reason}, on a copy packed anew, so it differs from dynamic masking in segmentation only"


def _group_reason(group: list[str], arms: dict[str, ArmPlan]) -> str:
    raw = {name: _comparable(arms[name].config) for name in group}
    if all(part == raw[group[0]] for part in raw.values()):
        return (
            "their resolved configs are identical apart from the arm name (and downstream settings, which "
            "do not change the pretrained model): one run serves both, and the comparison is of a run with itself"
        )
    statics = [(name, plan) for name, plan in ((n, arms[n]) for n in group)
               if static_trains_as_dynamic(plan.config, plan.passes, plan.format_copies)]  # fmt: skip
    if statics:
        return _static_reason(statics)
    return "they differ only in masking.dupe_factor, which dynamic masking does not read"


def find_ineffective(arms: dict[str, ArmPlan]) -> list[Ineffective]:
    """Warnings about the arms (in suite order; random-init controls, which do not train, left out):

    - arms whose effective training is identical (the same pretraining config once masking is taken as
      the trainer realises it), with why: identical configs, static masking that repeats no mask, or a
      dupe_factor that dynamic masking ignores;
    - arms whose static masking repeats no mask although no other arm trains like them;
    - arms that would train like another one if their static masking repeated nothing, while their
      passes are unknown (`certain` False), with the condition to check.
    """
    trained = {name: plan for name, plan in arms.items() if _pretrains(plan.config)}
    groups: list[list[str]] = []
    for name, plan in trained.items():
        part = effective_part(plan.config, plan.passes, plan.format_copies)
        for group in groups:
            first = trained[group[0]]
            if effective_part(first.config, first.passes, first.format_copies) == part:
                group.append(name)
                break
        else:
            groups.append([name])
    found = [Ineffective(tuple(g), _group_reason(g, trained)) for g in groups if len(g) > 1]
    named = {arm for warning in found for arm in warning.arms}
    for name, plan in trained.items():
        if name not in named and static_repeats_nothing(plan.config, plan.passes):
            reason = _static_reason([(name, plan)])
            if static_trains_as_dynamic(plan.config, plan.passes, plan.format_copies):
                reason += "; it trains as dynamic masking would"
            found.append(Ineffective((name,), reason))
    found += _unknown(trained, named)
    return found


def _unknown(trained: dict[str, ArmPlan], named: set[str]) -> list[Ineffective]:
    """Static arms whose passes are not known yet but which would train like another arm if they
    stay within dupe_factor passes."""
    warnings: list[Ineffective] = []
    for name, plan in trained.items():
        if name in named or not _static(plan.config) or plan.passes is not None:
            continue
        if any(name in w.arms for w in warnings):  # already named beside another static arm
            continue
        # within dupe_factor passes (0 stands for any such number), against the others as far as known
        as_dynamic = effective_part(plan.config, 0.0, plan.format_copies)
        twins = [
            other for other, p in trained.items()
            if other != name and effective_part(p.config, 0.0 if p.passes is None else p.passes, p.format_copies)
            == as_dynamic
        ]  # fmt: skip
        if twins:
            dupe = (plan.config.get("masking") or {}).get("dupe_factor", DEFAULT_DUPE)
            within = passes_as_dynamic(plan.config, plan.format_copies)
            unit = "pass" if within == 1 else "passes"
            reason = (
                f"static masking with dupe_factor {dupe} trains as dynamic masking does unless training makes "
                f"more than {within:g} {unit} over the training data; the data is not built yet, "
                "so the passes are not known (`harness data SUITE` builds it, and `harness run` checks again "
                "before training)"
            )
            warnings.append(Ineffective((name, *twins), reason, certain=False))
    return warnings


# ------------------------------------------------------------------ the inputs, before training


def arm_plans(suite: Suite, cache_root: Path, build_arms: Collection[str] = ()) -> dict[str, ArmPlan]:
    """Each arm of the suite with its planned passes where they matter and can be known: a static arm's
    from its training data when the stage cache at `cache_root` holds it, or when the arm is in
    `build_arms` from data built now (its runs are about to build the same data; a corpus that cannot
    be built is left to them to report). Dynamic arms need no passes: none of their masks depends on
    them. Without `build_arms` nothing is built or written."""
    sizes: dict[tuple[str, bool], tuple[int, int] | None] = {}  # (data config, built?) -> (sequences, tokens)
    plans = {}
    for arm, runs in suite.by_arm().items():
        config = runs[0].config
        passes = tokens = None
        if config.masking.kind == "static":
            key = (config.data.model_dump_json(), arm in build_arms)
            if key not in sizes:
                sizes[key] = _train_size(config, cache_root, build=key[1])
            if sizes[key] is not None:
                sequences, tokens = sizes[key]
                passes = planned_passes(config, sequences, tokens)
        plans[arm] = ArmPlan(config.model_dump(mode="json"), passes, tokens)
    return plans


def _train_size(config: RunConfig, cache_root: Path, build: bool) -> tuple[int, int] | None:
    """(training sequences, training tokens) of the run's data: from the cache, else, with `build`,
    from data prepared now; None when not known."""
    from harness.data.cache import StageCache
    from harness.data.pipeline import cached_train_sequences, prepare_data

    train = cached_train_sequences(config.data, cache_root)
    if train is None and build:
        try:
            train = prepare_data(config.data, StageCache(cache_root), config.eval.heldout_sequences).train
        except Exception:  # whatever stops the build, the arm's runs record it as they always have
            return None
    return (len(train), int(train.lengths.sum())) if train is not None else None
