"""Controls: `controls: [random_init]` adds, per seed, the baseline arm's config without pretraining,
recorded and evaluated like every run and compared against every arm in the report."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_suite
from safetensors.torch import load_file

from harness.cli import main
from harness.records import RunRecord
from harness.report import build_report
from harness.results import load_results, source_from_suite
from harness.runner import load_pretrained
from harness.suite import load_suite


def control_suite(**changes):
    suite = tiny_suite(seeds=[0, 1], controls=["random_init"], **changes)
    suite["base"]["eval"] = {
        "heldout_sequences": 16,
        "tasks": ["synthetic-topic"],
        "finetune": {"epochs": 1, "batch_size": 16, "max_train_examples": 60, "max_eval_examples": 40,
                     "seeds": [0, 1], "lr_grid": [1e-4, 1e-3], "pooling": "mean"},
    }  # fmt: skip
    return suite


def test_a_control_per_seed_with_its_own_run_id(write_suite):
    suite = load_suite(write_suite(control_suite()))
    arms = {(r.arm, r.seed): r for r in suite.runs}
    assert [r.arm for r in suite.runs] == ["dynamic", "dynamic", "static", "static", "random-init", "random-init"]
    for seed in (0, 1):
        control, baseline = arms[("random-init", seed)], arms[("dynamic", seed)]
        assert control.run_id not in {r.run_id for r in suite.runs if r is not control}
        assert control.config.train.pretrain is False and baseline.config.train.pretrain is None
        # the baseline's config, pretraining switched off: nothing else differs
        differs = control.config.model_dump()
        differs["train"]["pretrain"] = None
        assert differs == baseline.config.model_dump()
        assert control.header["control"] == "random_init" and control.header["built_from"] == "dynamic"
    assert [c.name for c in suite.spec.comparison_list()] == [
        "static vs dynamic", "dynamic vs random-init", "static vs random-init"
    ]  # fmt: skip


def test_the_control_takes_the_named_baseline(write_suite):
    suite = load_suite(write_suite(control_suite(baseline="static")))
    control = next(r for r in suite.runs if r.arm == "random-init")
    assert control.config.masking.kind == "static" and control.header["built_from"] == "static"


def test_one_control_per_model_and_tokenizer_group(write_suite):
    suite = control_suite(metrics=["heldout_bpb"])
    suite["arms"] = {
        "bpe": {},
        "bpe-static": {"masking": {"kind": "static", "dupe_factor": 2}},
        "wordpiece": {"data": {"tokenizer": {"kind": "wordpiece"}}},
        "bpe-explicit": {"model": {"dropout": 0.1}},  # the default, written out: the same model
    }
    loaded = load_suite(write_suite(suite))
    assert loaded.spec.control_of() == {
        "bpe": "random-init:bpe", "bpe-static": "random-init:bpe", "bpe-explicit": "random-init:bpe",
        "wordpiece": "random-init:wordpiece",
    }  # fmt: skip
    controls = {r.arm: r for r in loaded.runs if r.seed == 0 and r.arm.startswith("random-init")}
    assert controls["random-init:wordpiece"].config.data.tokenizer.kind == "wordpiece"
    assert controls["random-init:bpe"].config.data.tokenizer.kind == "byte_bpe"
    names = [c.name for c in loaded.spec.comparison_list()]
    assert "wordpiece vs random-init:wordpiece" in names and "bpe-static vs random-init:bpe" in names
    # --arm picks a control by name
    only = load_suite(write_suite(suite), arms=["random-init:wordpiece"])
    assert {r.arm for r in only.runs} == {"random-init:wordpiece"}


@pytest.mark.parametrize(
    "change,words",
    [
        ({"controls": ["random_inits"]}, "controls.0: unknown control 'random_inits' (expected one of: random_init)"),
        ({"arms": {"random-init": {}, "b": {}}}, "arms.random-init: 'random-init' names the suite's random-init"),
    ],
)
def test_bad_controls_exit_2(change, words, write_suite, tmp_path, capsys):
    path = write_suite({**control_suite(), **change})
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def control_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("controls")
    path = root / "suite.yaml"
    path.write_text(json.dumps(control_suite(metrics=["heldout_bpb", "synthetic-topic.accuracy"])))
    out = root / "results"
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--report-out", str(root / "report")]) == 0
    return path, out, root / "report"


def test_the_control_is_never_optimised_and_is_evaluated_alike(control_results):
    path, out, _ = control_results
    suite = load_suite(path)
    for seed in (0, 1):
        control = next(r for r in suite.runs if r.arm == "random-init" and r.seed == seed)
        arm = next(r for r in suite.runs if r.arm == "dynamic" and r.seed == seed)
        control_dir, arm_dir = suite.run_dir(out, control), suite.run_dir(out, arm)
        # its weights are a fresh model's, initialised from the run seed
        config, model, _, _ = load_pretrained(control_dir)
        torch.manual_seed(seed)
        fresh = type(model)(config.model, model.roberta.embeddings.word_embeddings.num_embeddings,
                            model.roberta.embeddings.word_embeddings.padding_idx, nsp=config.data.nsp)  # fmt: skip
        saved = load_file(str(control_dir / "checkpoint" / "model.safetensors"))
        assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())
        trained = load_file(str(arm_dir / "checkpoint" / "model.safetensors"))
        assert not torch.equal(trained["roberta.encoder.layer.0.intermediate.dense.weight"],
                               saved["roberta.encoder.layer.0.intermediate.dense.weight"])  # fmt: skip
        record, arm_record = RunRecord(control_dir), RunRecord(arm_dir)
        assert not any("train_loss" in row for row in record.metrics())
        assert any("train_loss" in row for row in arm_record.metrics())
        summary, arm_summary = record.summary, arm_record.summary
        assert summary["budget"]["steps"] == summary["budget"]["tokens"] == 0
        assert "train_loss" not in summary["metrics"] and "heldout_bpb" in summary["metrics"]
        # the same evaluation: held-out positions, task data, protocol and fine-tuning seeds
        for key in ("heldout_masked", "heldout_masked_bytes"):
            assert summary["references"][key] == arm_summary["references"][key]
        task, arm_task = summary["downstream"]["synthetic-topic"], arm_summary["downstream"]["synthetic-topic"]
        for key in ("train_examples", "dev_examples", "dev_split", "majority_baseline"):
            assert task[key] == arm_task[key]
        assert set(task["metrics"]["accuracy"]["seeds"]) == {"0", "1"}
        assert {k: v for k, v in task["protocol"].items() if k != "lr"} == {
            k: v for k, v in arm_task["protocol"].items() if k != "lr"
        }
        assert task["lr_selection"]["grid"] == arm_task["lr_selection"]["grid"] == [1e-4, 1e-3]
        assert task["protocol"]["lr"] == task["lr_selection"]["chosen"]


def test_controls_are_listed_skipped_when_done_and_sharded(control_results, capsys):
    path, out, _ = control_results
    capsys.readouterr()
    assert main(["ls", str(out)]) == 0
    listed = capsys.readouterr().out
    assert listed.count("random-init") == 2
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already done, skipped") == 6 and "random-init seed=1" in printed
    assert main(["run", str(path), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "2 arm(s) x 2 seed(s) + 1 control(s) x 2 seed(s) -> 6 run(s)" in printed
    assert "[random-init] resolved config" in printed
    assert main(["run", str(path), "--out", str(out), "--dry-run", "--shard", "2/2"]) == 0
    printed = capsys.readouterr().out
    assert "shard 2/2: 3 of them" in printed and "random-init  1" in printed


def test_the_report_compares_every_arm_with_the_control(control_results):
    path, out, report_dir = control_results
    comparisons = (report_dir / "comparisons.csv").read_text()
    for arm in ("dynamic", "static"):
        assert f"{arm} vs random-init,{arm},random-init,heldout_bpb," in comparisons
        assert f"{arm} vs random-init,{arm},random-init,synthetic-topic.accuracy," in comparisons
    assert "random-init" in (report_dir / "runs.csv").read_text()
    # a report read from the results directory alone (its manifest) makes the same comparisons
    results = load_results([source_from_suite(load_suite(path), out)])
    assert "random-init" in results.arms()
    from harness.report.tables import comparisons_for
    from harness.results import resolve_sources

    from_dir = load_results(resolve_sources([out / "t"], out))
    assert [c.name for c in comparisons_for(from_dir)] == [c.name for c in comparisons_for(results)]
    build_report(from_dir, report_dir.parent / "again")
    assert (report_dir.parent / "again" / "comparisons.csv").read_text() == comparisons


def test_a_scale_can_add_controls_that_other_scales_do_not_have(write_suite):
    suite = tiny_suite(scales={"plain": {}, "controlled": {"controls": ["random_init"], "seeds": [3]}},
                       default_scale="plain")  # fmt: skip
    path = write_suite(suite)
    assert [r.arm for r in load_suite(path).runs] == ["dynamic", "static"]
    controlled = load_suite(path, overrides=["scale=controlled"])
    assert [(r.arm, r.seed) for r in controlled.runs] == [("dynamic", 3), ("static", 3), ("random-init", 3)]
    bad = write_suite({**suite, "scales": {"controlled": {"controls": ["nope"]}}}, name="bad.yaml")
    with pytest.raises(Exception, match="unknown control 'nope'"):
        load_suite(bad, overrides=["scale=controlled"])
