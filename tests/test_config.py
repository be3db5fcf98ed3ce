"""Bad suites end with exit 2 and one message naming the file, the key path and what was expected,
before any training and without writing a run record."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import tiny_suite
from pydantic import ValidationError

from harness.cli import main
from harness.config import ConfigError, RunConfig, validate_run_config
from harness.suite import load_suite


def _with(suite: dict, path: str, value) -> dict:
    suite = copy.deepcopy(suite)
    node = suite
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return suite


BAD_SUITES = [
    # (change, key path expected in the message, words expected in the message)
    (("base.model.hiden", 64), "base.model.hiden", "unknown key"),
    (("base.model.heads", 3), "base.model", "heads (3) must divide hidden (64)"),
    (("base.masking", {"mask_prob": 1.5}), "base.masking.mask_prob", "less than 1"),
    (("base.masking", {"mask_prob": 0.0}), "base.masking.mask_prob", "greater than 0"),
    (("base.train.lr", "fast"), "base.train.lr", "valid number"),
    (("arms.static", {"masking": {"replace_mask": 0.5}}), "arms.static.masking", "must be 1"),
    (("arms.static", {"model": {"hidden": 65}}), "arms.static.model", "must divide hidden"),
    (("arms.static", {"masking": {"kinds": "static"}}), "arms.static.masking.kinds", "unknown key"),
    (("arms.static", {"optimizer": {"lr": 1}}), "arms.static.optimizer", "unknown key"),
    (
        ("base.data.corpus", {"source": "files", "paths": ["/nonexistent/corpus.txt"]}),
        "base.data.corpus.paths",
        "/nonexistent/corpus.txt",
    ),
    (("base.data.nsp", True), "base.data", "nsp needs a pair format"),
    (("base.data.max_seq_len", 512), "base", "exceeds model.max_len"),
    (("seeds", [-1]), "seeds", "greater than or equal to 0"),
    (("seeds", []), "seeds", "at least 1"),
    (("seeds", [0, 0]), "seeds", "distinct"),
    (("base.train.seed", 3), "base.train.seed", "`seeds` list"),
    (("base.model.preset", {"x": 1}), "base.model.preset", "tiny"),
    (("arms.static", {"data": {"format": "segment_pair"}, "model": {"token_types": 1}}), "arms.static", "token_types"),
    (("metrics", ["accuracy"]), "metrics", "unknown metric"),
    (("colour", "blue"), "colour", "unknown key"),
    (("base.eval.finetune", {"lr_grid": []}), "base.eval.finetune.lr_grid", "at least 1"),
    (("base.eval.finetune", {"lr_grid": [1e-3, 1e-3]}), "base.eval.finetune.lr_grid", "distinct"),
    (("base.eval.finetune", {"lr_grid": [-1e-3]}), "base.eval.finetune.lr_grid.0", "greater than 0"),
    (("base.eval.finetune", {"pooling": "max"}), "base.eval.finetune.pooling", "'first' or 'mean'"),
    (("base.eval.task_overrides", {"sst2": {"pooling": "cls"}}), "base.eval.task_overrides.sst2.pooling", "'mean'"),
    (("controls", ["random-init"]), "controls.0", "unknown control 'random-init' (expected one of: random_init)"),
    (("controls", ["random_init", "random_init"]), "controls.1", "listed twice"),
]


@pytest.mark.parametrize("change,key_path,words", BAD_SUITES, ids=[c[1] for c in BAD_SUITES])
def test_bad_suite_exits_2_naming_file_and_key(change, key_path, words, write_suite, tmp_path, capsys):
    path = write_suite(_with(tiny_suite(), *change))
    out = tmp_path / "results"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, "one message"
    assert err.startswith(f"error: {path}: {key_path}"), err
    assert words in err, err
    assert not out.exists(), "no run record may be written for a bad suite"


def test_bad_set_override_names_the_flag(write_suite, tmp_path, capsys):
    path = write_suite(tiny_suite())
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--set", "train.lrr=1e-3"]) == 2
    assert "error: --set: train.lrr: unknown key" in capsys.readouterr().err


def test_set_errors_are_blamed_on_the_flag(write_suite, tmp_path, capsys):
    path = write_suite(tiny_suite())
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--set", "data.corpus={source: files}"]) == 2
    assert "error: --set: data.corpus.paths" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--set", "train=5"]) == 2
    assert "error: --set: train: expected a mapping" in capsys.readouterr().err


def test_set_override_reaches_every_run(write_suite):
    suite = load_suite(write_suite(tiny_suite()), overrides=["train.lr=7e-4", "masking.mask_prob=0.2"])
    assert {r.config.train.lr for r in suite.runs} == {7e-4}
    assert {r.config.masking.mask_prob for r in suite.runs} == {0.2}


def test_arm_selection_with_comparisons_against_arms_left_out(write_suite, capsys):
    path = write_suite(tiny_suite(comparisons=[{"arm": "static", "baseline": "dynamic"}]))
    assert [r.arm for r in load_suite(path, arms=["static"]).runs] == ["static"]
    assert main(["run", str(path), "--arm", "static", "--dry-run"]) == 0


def test_missing_suite_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "suite file not found" in capsys.readouterr().err


def test_preset_fills_model_and_explicit_fields_win():
    config = validate_run_config(
        {"model": {"preset": "base", "layers": 3}, "train": {"batch_size": 8, "steps": 1}}, "x"
    )
    assert (config.model.layers, config.model.hidden, config.model.heads) == (3, 768, 12)


def test_config_is_frozen():
    config = validate_run_config({"train": {"batch_size": 8, "steps": 1}}, "x")
    with pytest.raises(ValidationError):
        config.train.lr = 1.0  # type: ignore[misc]


def test_every_field_has_help():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no help string"
            for sub in (field.annotation, *getattr(field.annotation, "__args__", ())):
                if isinstance(sub, type) and hasattr(sub, "model_fields"):
                    walk(sub)

    walk(RunConfig)


# ------------------------------------------------------------------------------------ run ids


def test_run_id_is_stable_for_the_same_config(write_suite, tmp_path):
    first = load_suite(write_suite(tiny_suite(), "a.yaml"))
    # same content, different key order and a different file: same ids
    reordered = tiny_suite()
    reordered["base"] = dict(reversed(list(reordered["base"].items())))
    second = load_suite(write_suite(reordered, "b.yaml"))
    assert [r.run_id for r in first.runs] == [r.run_id for r in second.runs]


LEAF_CHANGES = [
    "model.layers=2",
    "model.dropout=0.2",
    "model.norm=pre",
    "model.positions=rope",
    "data.tokenizer.vocab_size=2000",
    "data.tokenizer.kind=wordpiece",
    "data.format=doc_sentences",
    "data.max_seq_len=32",
    "masking.mask_prob=0.2",
    "masking.kind=static",
    "train.lr=1e-4",
    "train.beta2=0.999",
    "train.steps=13",
    "eval.mask_seed=7",
    "eval.heldout_sequences=8",
    "eval.batch_size=16",
    "data.corpus.documents=121",
    "train.pretrain=false",
]


@pytest.mark.parametrize("assignment", LEAF_CHANGES)
def test_any_changed_field_changes_the_run_id(assignment, write_suite):
    path = write_suite(tiny_suite(arms={"only": {}}))
    base_id = load_suite(path).runs[0].run_id
    assert load_suite(path, overrides=[assignment]).runs[0].run_id != base_id


EVAL_ONLY_CHANGES = [
    "eval.tasks=[synthetic-topic]",
    "eval.finetune.lr=3e-4",
    "eval.finetune.seeds=[0,1,2]",
    "eval.finetune.lr_grid=[1e-3,3e-4]",
    "eval.finetune.pooling=first",
    "eval.task_overrides={sst2: {pooling: mean}}",
    "eval.glue_dir=/some/where/glue",
    "eval.dev_splits={mnli: dev_mismatched}",
]


@pytest.mark.parametrize("assignment", EVAL_ONLY_CHANGES)
def test_downstream_settings_leave_the_run_id_unchanged(assignment, write_suite):
    """The run id names the pretrained model: what it is fine-tuned on, and how, is filed per task
    under the run (harness/downstream.py), so adding or changing a task does not pretrain again."""
    path = write_suite(tiny_suite(arms={"only": {}}))
    base_id = load_suite(path).runs[0].run_id
    assert load_suite(path, overrides=[assignment]).runs[0].run_id == base_id


def test_configs_differing_in_downstream_settings_alone_share_a_run_id_but_not_in_held_out_ones():
    plain = {"train": {"batch_size": 8, "steps": 1}}
    downstream = {
        **plain,
        "eval": {"tasks": ["sst2", "synthetic-topic"], "glue_dir": None, "finetune": {"epochs": 5, "lr": 3e-4,
                 "seeds": [0, 1], "pooling": "mean"}, "task_overrides": {"sst2": {"lr_grid": [1e-3]}}},
    }  # fmt: skip
    assert validate_run_config(downstream, "x").run_id() == validate_run_config(plain, "x").run_id()
    for held_out in ({"heldout_sequences": 100}, {"mask_seed": 1}):
        other = {**plain, "eval": held_out}
        assert validate_run_config(other, "x").run_id() != validate_run_config(plain, "x").run_id()


def test_arms_differing_in_eval_alone_are_refused(write_suite, tmp_path, capsys):
    suite = tiny_suite(arms={"a": {}, "b": {"eval": {"finetune": {"lr": 3e-4}}}})
    assert main(["run", str(write_suite(suite)), "--out", str(tmp_path / "r")]) == 2
    assert "arms.b: pretrains the same model as arm a" in capsys.readouterr().err


def test_seed_changes_the_run_id(write_suite):
    suite = load_suite(write_suite(tiny_suite(arms={"only": {}}, seeds=[0, 1])))
    assert len({r.run_id for r in suite.runs}) == 2


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_suites_resolve(path, monkeypatch):
    monkeypatch.chdir(path.parents[1])  # suites name data relative to the repository root
    try:
        suite = load_suite(path)
    except ConfigError as err:
        if "not found" in err.message and "shared/data" in err.message:
            pytest.skip(f"{path.name} reads ../shared/data, which is not present")
        raise
    assert suite.runs


def test_config_error_carries_fields():
    err = ConfigError("f.yaml", "a.b", "bad")
    assert (err.source, err.key_path, err.message) == ("f.yaml", "a.b", "bad")


def test_fields_added_later_leave_earlier_run_ids_unchanged():
    """The quickstart's committed report names these run ids: a new optional field must not move them.
    (Pinned again when run ids stopped hashing downstream settings: the ids before were 3015ff7fe1ff and
    6abda371f3bd; `harness migrate` renames records made under that rule.)"""
    from pathlib import Path

    from harness.suite import load_suite

    suite = load_suite(Path(__file__).resolve().parents[1] / "ablations" / "quickstart.yaml")
    ids = {(run.arm, run.seed): run.run_id for run in suite.runs}
    assert ids[("static", 0)] == "6b2b92da942a" and ids[("segment-pair", 2)] == "256df2995fee"


def test_model_positions_leaves_earlier_run_ids_unchanged():
    """Ids computed from these dicts before `model.positions` existed: unset, it means learned, as before.
    (Pinned again when run ids stopped hashing downstream settings: they were ebd3f48cab72 and 2d0e096e591b.)"""
    raw = {
        "model": {"preset": "tiny", "norm": "pre"},
        "data": {"corpus": {"source": "synthetic", "documents": 200}},
        "train": {"tokens_per_step": 1024, "steps": 10, "seed": 3},
    }
    config = validate_run_config(raw, "x")
    assert config.model.positions is None and not config.model.rope
    assert config.run_id() == "908566f7e3a1"
    assert validate_run_config({"train": {"batch_size": 8, "steps": 1}}, "x").run_id() == "10ce2bbf4ff3"
    rope = validate_run_config({**raw, "model": {**raw["model"], "positions": "rope"}}, "x")
    assert rope.model.rope and rope.run_id() != "908566f7e3a1"


def test_run_id_of_a_stored_config_is_the_run_id():
    """`harness migrate` computes ids from config.json without validating it (its data may be elsewhere):
    the same id as the validated config's, also for a dump from before fields added later existed."""
    from harness.config import run_id_of

    config = validate_run_config({"train": {"batch_size": 8, "steps": 1}, "eval": {"tasks": ["sst2"]}}, "x")
    dump = config.model_dump(mode="json")
    assert run_id_of(dump) == config.run_id()
    del dump["model"]["positions"], dump["train"]["pretrain"], dump["eval"]["task_defs"]
    assert run_id_of(dump) == config.run_id()


def scaled_suite() -> dict:
    from conftest import tiny_suite

    suite = tiny_suite()
    suite["scales"] = {
        "tiny": {"base": {"train": {"steps": 5}}},
        "small": {"base": {"model": {"layers": 2}, "train": {"steps": 50}},
                  "arms": {"static": {"masking": {"dupe_factor": 5}}}},
    }  # fmt: skip
    suite["default_scale"] = "tiny"
    suite["base"]["data"]["corpus"] = {"source": "hub", "name": "some/corpus"}
    suite["local"] = {
        "base": {"data": {"corpus": {"source": "files", "paths": ["{local}/corpus.txt"]}}},
    }
    return suite


def test_a_scale_is_chosen_with_set_and_names_its_own_suite(write_suite):
    path = write_suite(scaled_suite())
    tiny = load_suite(path)
    assert tiny.name == "t.tiny" and tiny.runs[0].config.train.steps == 5
    small = load_suite(path, overrides=["scale=small"])
    assert small.name == "t.small" and small.runs[0].config.train.steps == 50
    assert small.runs[0].config.model.layers == 2
    static = next(r for r in small.runs if r.arm == "static")
    assert static.config.masking.dupe_factor == 5 and static.config.masking.kind == "static"
    assert {r.run_id for r in tiny.runs}.isdisjoint(r.run_id for r in small.runs)


def test_bad_scale_choices_are_config_errors(write_suite):
    path = write_suite(scaled_suite())
    with pytest.raises(ConfigError, match="no scale 'huge'"):
        load_suite(path, overrides=["scale=huge"])
    plain = write_suite(__import__("conftest").tiny_suite(), "plain.yaml")
    with pytest.raises(ConfigError, match="declares no scales"):
        load_suite(plain, overrides=["scale=tiny"])
    broken = scaled_suite()
    broken["scales"]["tiny"]["arms"] = {"nope": {}}
    with pytest.raises(ConfigError, match="scales.tiny.arms.nope: no arm named 'nope'"):
        load_suite(write_suite(broken, "broken.yaml"))


def test_local_data_overrides_apply_only_with_a_data_directory(write_suite, tmp_path, monkeypatch):
    (tmp_path / "corpus.txt").write_text("one document.\n\nanother one.\n")
    path = write_suite(scaled_suite())
    monkeypatch.delenv("HARNESS_LOCAL_DATA", raising=False)
    assert load_suite(path).runs[0].config.data.corpus.source == "hub"
    chosen = load_suite(path, overrides=[f"local={tmp_path}"]).runs[0].config.data.corpus
    assert chosen.source == "files" and chosen.paths == [f"{tmp_path}/corpus.txt"]
    monkeypatch.setenv("HARNESS_LOCAL_DATA", str(tmp_path))
    assert load_suite(path).runs[0].config.data.corpus.paths == [f"{tmp_path}/corpus.txt"]


def test_local_default_is_used_only_when_the_hub_is_out_of_reach(write_suite, tmp_path, monkeypatch, capsys):
    import harness.data.sources as sources

    (tmp_path / "corpus.txt").write_text("one document.\n\nanother one.\n")
    suite = scaled_suite()
    suite["local_default"] = str(tmp_path)
    path = write_suite(suite)
    monkeypatch.delenv("HARNESS_LOCAL_DATA", raising=False)
    monkeypatch.setattr(sources, "hub_reachable", lambda: True)
    assert load_suite(path).runs[0].config.data.corpus.source == "hub"
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)
    assert load_suite(path).runs[0].config.data.corpus.paths == [f"{tmp_path}/corpus.txt"]
    load_suite(path)
    assert capsys.readouterr().err.count(f"hub is out of reach; using the local data in {tmp_path}") == 1
    suite["local_default"] = str(tmp_path / "absent")  # a default that is not there: stay on the hub
    assert load_suite(write_suite(suite, "absent.yaml")).runs[0].config.data.corpus.source == "hub"


def test_offline_mode_counts_as_out_of_reach(monkeypatch):
    from harness.data.sources import hub_reachable

    hub_reachable.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False
    hub_reachable.cache_clear()


def test_a_scale_sizes_the_local_source_and_may_set_its_own_seeds(write_suite, tmp_path):
    (tmp_path / "corpus.txt").write_text("one document.\n\nanother one.\n")
    suite = scaled_suite()
    suite["scales"]["small"]["base"]["data"] = {"corpus": {"max_documents": 7}}
    suite["scales"]["small"]["seeds"] = [5]
    small = load_suite(write_suite(suite), overrides=["scale=small", f"local={tmp_path}"])
    corpus = small.runs[0].config.data.corpus
    assert corpus.source == "files" and corpus.max_documents == 7  # local swapped the source, the scale sized it
    assert {r.seed for r in small.runs} == {5}
    assert {r.seed for r in load_suite(write_suite(suite, "again.yaml")).runs} == set(suite["seeds"])


SHIPPED = ["roberta-table1-masking", "roberta-table2-formats", "roberta-table3-batch", "text-encoding",
           "roberta-vs-bert"]  # fmt: skip
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_ablation_suites_resolve_at_every_scale(name, monkeypatch):
    import harness.data.sources as sources

    monkeypatch.delenv("HARNESS_LOCAL_DATA", raising=False)
    monkeypatch.setattr(sources, "hub_reachable", lambda: True)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    path = Path("ablations") / f"{name}.yaml"
    for scale in ("tiny", "small", "base"):
        suite = load_suite(path, overrides=[f"scale={scale}"])
        assert suite.name == f"{name}.{scale}" and len(suite.runs) >= 2 * len(suite.spec.seeds)
        assert suite.runs[0].config.data.corpus.name == "Salesforce/wikitext"
        assert suite.runs[0].config.data.corpus.text_layout == "wikitext"
        assert all(r.config.model.preset == scale for r in suite.runs)
        if scale == "tiny":
            assert len(suite.spec.seeds) >= 3
        if SHARED_DATA.is_dir():
            local = load_suite(path, overrides=[f"scale={scale}", f"local={SHARED_DATA}"])
            config = local.runs[0].config
            assert config.data.corpus.source == "files" and config.eval.task_files["mnli"].dev.endswith(".jsonl")
            assert {"sst2", "mnli", "rte", "mrpc"} <= set(config.eval.tasks)
