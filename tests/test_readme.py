"""The front page: short, and its numbers written by the report, never typed by hand (README.md and reports/ are
the repository's own files, which no experiment rewrites)."""

from __future__ import annotations

from llama_pe.analysis.report import report
from llama_pe.analysis.verdict_table import END, START, readme_block
from tests.conftest import REPO_ROOT

MAX_README_LINES = 200  # what, why, the answer, one figure, the quickstart, the commands, the map of docs/


def test_the_readme_stays_a_front_page():
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move the long parts to docs/"


def test_the_readmes_verdict_table_is_what_the_report_writes_from_the_ledger(tmp_path, monkeypatch):
    # The committed study's report command (README, docs/results.md), from the ledger alone.
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "report"
    report(
        ".", str(out), False, ["train.max_steps=400"], [], False, "reports/ledger.csv", "train.lr,train.pos_lr_scale"
    )
    written = (out / "verdicts.md").read_text(encoding="utf-8")
    assert written == (REPO_ROOT / "reports/verdicts.md").read_text(encoding="utf-8"), (
        "reports/verdicts.md is stale: run the report again"
    )
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(START) == 1 and readme.count(END) == 1
    block = readme[readme.index(START) : readme.index(END) + len(END)]
    assert block == readme_block(written), (
        "README.md's verdict table differs from the report's verdicts.md: copy reports/verdicts.md between the markers"
    )
    assert "| alibi |" in block and "| kerple |" in block  # the table is the study's, not an empty one
