"""Where reports go: inside their own results root (`<out>/reports/<suite>/`), the repository's
`reports/` only for its committed results, a search's report beside its storage; and no example
command of the README writes into a tracked file."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.cli import build_parser, main
from harness.records import RunRecord
from harness.report import committed_repo, default_report_dir
from harness.results import SuiteSource, source_from_suite
from harness.search import default_storage_url, report_dir, report_folder
from harness.suite import load_suite

ROOT = Path(__file__).resolve().parent.parent
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def write_runs(suite_dir: Path, name: str = "fake") -> Path:
    for arm, value in (("A", 0.6), ("B", 0.7)):
        for seed in (0, 1):
            header = {"suite": name, "arm": arm, "seed": seed, "run_id": f"{arm}-{seed}"}
            record = RunRecord(suite_dir / header["run_id"])
            record.start(header, {"train": {"seed": seed}})
            record.finish({**header, "metrics": {"sst2.accuracy": value + seed / 100}})
    return suite_dir


def test_two_results_roots_never_share_a_report_dir(tmp_path, capsys):
    """The observed collision: `--out /x/a` and `--out /x/b` both wrote /x/reports/<suite>/."""
    a, b = write_runs(tmp_path / "x" / "a" / "fake"), write_runs(tmp_path / "x" / "b" / "fake")
    assert main(["report", str(a)]) == 0 and main(["report", str(b)]) == 0
    capsys.readouterr()
    for root in (a.parent, b.parent):
        written = root / "reports" / "fake" / "report.md"
        assert f"under `{root / 'fake'}`" in written.read_text(), "each report is of its own root's records"
    assert not (tmp_path / "x" / "reports").exists()


def test_reports_of_several_suites_stay_apart(tmp_path):
    def source(directory: str) -> SuiteSource:
        return SuiteSource(Path(directory).name, tmp_path / directory)

    same_root = default_report_dir([source("a/one"), source("a/two")])
    assert same_root == tmp_path / "a" / "reports" / "one-vs-two"
    mixed = default_report_dir([source("a/one"), source("b/two")])
    other = default_report_dir([source("a/one"), source("c/two")])
    assert mixed.parent == other.parent == tmp_path / "a" / "reports"
    assert mixed.name.startswith("one-vs-two-") and mixed != other != same_root


@needs_git
def test_only_committed_results_report_to_the_repository_reports(tmp_path):
    repo = tmp_path / "repo"
    for name in ("kept", "fresh"):
        (repo / "results" / name).mkdir(parents=True)
        (repo / "results" / name / "suite.json").write_text("{}")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "results/kept/suite.json"], check=True)
    kept, fresh = (SuiteSource(n, repo / "results" / n) for n in ("kept", "fresh"))
    assert committed_repo(kept.directory) is None, "no reports/ beside results/: not the committed layout"
    (repo / "reports").mkdir()
    assert committed_repo(kept.directory) == repo.resolve() and committed_repo(fresh.directory) is None
    assert default_report_dir([kept]) == repo / "reports" / "kept"
    assert default_report_dir([fresh]) == repo / "results" / "reports" / "fresh"
    assert default_report_dir([kept, fresh]).parent == repo / "results" / "reports"


@needs_git
def test_the_repository_s_own_committed_results(tmp_path):
    if committed_repo(ROOT / "results" / "roberta-table1-masking.tiny") is None:
        pytest.skip("not a git checkout of the repository")
    committed = SuiteSource("roberta-table1-masking.tiny", ROOT / "results" / "roberta-table1-masking.tiny")
    assert default_report_dir([committed]) == ROOT / "reports" / "roberta-table1-masking.tiny"
    # the quickstart's records are not committed: its report stays under the results root
    quickstart = SuiteSource("quickstart", ROOT / "results" / "quickstart")
    assert default_report_dir([quickstart]) == ROOT / "results" / "reports" / "quickstart"


def test_a_search_report_is_named_by_its_storage(tmp_path):
    """An SQLite search and a PostgreSQL search of one suite and results root never share a report."""
    suite, out = SimpleNamespace(name="s"), tmp_path / "results"
    default = default_storage_url(out, suite)
    assert report_dir(out, suite, default) == out / "reports" / "s" / "search"
    assert report_dir(out, suite, default, tmp_path / "mine") == tmp_path / "mine" / "search"
    folders = {
        report_folder(url, out, suite)
        for url in (
            default,
            f"sqlite:///{tmp_path / 'other' / 'search.db'}",
            "postgresql+psycopg2://ana:secret@db.example/optuna",
            "postgresql+psycopg2://ana:other-secret@db.example/optuna",  # the same database
            "postgresql+psycopg2://ana@db2.example/optuna",
        )
    }
    assert len(folders) == 4
    assert all(re.fullmatch(r"search(-[A-Za-z0-9_.]+)*", f) for f in folders)
    assert not any("secret" in f for f in folders), "a password never goes into a path"
    assert {f.rsplit("-", 1)[0] for f in folders} == {"search", "search-sqlite-search", "search-postgresql-optuna"}


# ------------------------------------------------------------------------ the README's commands


def readme_commands() -> list[str]:
    """Every `harness run|search SUITE ...` the README shows (in code blocks or inline), and what
    `make quickstart` runs."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.findall(r"harness (?:run|search) ablations/[^\s`#,]+\.yaml[^`#\n,]*", text)
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    quickstart = re.search(r"^quickstart:.*\n\t\$\(BIN\)/(harness .*)$", make, re.MULTILINE).group(1)
    return [command.strip() for command in [*found, quickstart]]


def ignored(path: Path) -> bool:
    """Outside the repository, or a path git ignores there."""
    path = (ROOT / path).resolve()
    if not path.is_relative_to(ROOT):
        return True
    return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode == 0


@needs_git
def test_readme_commands_write_no_tracked_file():
    """Runs and searches the README shows write their records and reports where git ignores them; the
    one exception is the rule itself: committed results (make cpu-recipe) rebuild their committed
    report in reports/<suite>. The shipped search example no longer rewrites
    reports/search-quickstart-lr/."""
    if committed_repo(ROOT / "results" / "roberta-table1-masking.tiny") is None:
        pytest.skip("not a git checkout of the repository")
    commands = readme_commands()
    assert any(c.startswith("harness search ablations/search-quickstart-lr.yaml") for c in commands)
    assert any(c.startswith("harness run ablations/quickstart.yaml") for c in commands)
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        suite = load_suite(ROOT / args.suite, overrides=args.set or [])
        out = Path(args.out)
        if args.command == "search":
            records, report = out / f"{suite.name}.search", report_dir(out, suite, default_storage_url(out, suite))
        else:
            records, report = out / suite.name, default_report_dir([source_from_suite(suite, out)])
        if committed_repo(ROOT / records) is not None:  # committed results rebuild their committed report
            assert (ROOT / report).resolve() == ROOT / "reports" / suite.name, command
            continue
        assert ignored(records / "x" / "config.json"), f"{command}: writes run records into tracked files"
        assert ignored(report / "report.md"), f"{command}: writes its report ({report}) into tracked files"


def test_a_report_is_dated_by_its_records_so_a_rebuild_changes_nothing(tmp_path, capsys):
    """Rebuilding a committed report from the same records must not touch it: the date it shows is the
    newest record's, not today's."""
    suite_dir = write_runs(tmp_path / "results" / "fake")
    for number, status in enumerate(sorted(suite_dir.glob("*/status.json"))):
        record = json.loads(status.read_text())
        status.write_text(json.dumps({**record, "time": f"2020-01-0{number + 1}T12:00:00+0000"}))
    assert main(["report", str(suite_dir), "--out", str(tmp_path / "one")]) == 0
    assert main(["report", str(suite_dir), "--out", str(tmp_path / "two")]) == 0
    capsys.readouterr()
    first = (tmp_path / "one" / "report.md").read_text()
    assert "records up to 2020-01-04)" in first and first == (tmp_path / "two" / "report.md").read_text()
