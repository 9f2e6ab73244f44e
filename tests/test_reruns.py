"""The 102-run study stays pairable: reruns of rope, alibi and kerple by today's code, on a CPU identity recorded as
computing the same, are the ledger's rows once more, and a rerun that differed would be refused."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from llama_pe.analysis.ledger import Ledger, LedgerError
from tests.conftest import REPO_ROOT

RERUNS = REPO_ROOT / "reports/reruns/ledger.csv"


@pytest.fixture
def study(tmp_path) -> Path:
    """A copy of the committed ledger and reports/same_computation.csv, in a folder with a dvc.yaml (a project)."""
    (tmp_path / "reports").mkdir()
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    for name in ("ledger.csv", "same_computation.csv"):
        shutil.copyfile(REPO_ROOT / "reports" / name, tmp_path / "reports" / name)
    return tmp_path / "reports/ledger.csv"


def nulls_as_none(frame):
    frame = frame.astype(object)
    return frame.where(frame.notna(), None)


def reruns() -> list[dict]:
    return Ledger.read(RERUNS, must_exist=True).rows


def test_the_reruns_are_the_ledgers_rows_once_more_and_the_report_reads_the_same_runs(study):
    before = Ledger.read(study).frame()
    ledger = Ledger.read(study)
    ledger.append(reruns())  # refused if a rerun's point had other results than its ledger row
    after = Ledger.read(study)
    assert len(after.rows) == len(before) + len(reruns()) == 102 + 6
    # The report's runs: each rerun is its point's row, counted once (the unrecorded cells of older rows, NaN or None).
    assert nulls_as_none(after.frame()).equals(nulls_as_none(before))
    codes = {row["code"] for row in reruns()}
    assert len(codes) == 4 and {ledger.same_as(code) for code in codes} == {"d6414eaeb289"}


def test_a_rerun_that_differs_in_one_metric_is_refused(study):
    changed = [dict(row) for row in reruns()[-1:]]
    changed[0]["test_ppl"] += 1e-6
    with pytest.raises(LedgerError, match=r"the same point as line \d+ .* other results"):
        Ledger.read(study).append(changed)


def test_without_the_recorded_equivalence_the_reruns_are_other_runs(study):
    (study.parent / "same_computation.csv").unlink()
    ledger = Ledger.read(study)
    ledger.append(reruns())
    assert len(Ledger.read(study).frame()) == 102 + 6  # another code, another machine: not paired with the rows


def test_every_equivalence_names_its_evidence_and_an_earlier_version():
    with (REPO_ROOT / "reports/same_computation.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    ledger_codes = {row["code"] for row in Ledger.read(REPO_ROOT / "reports/ledger.csv").rows}
    for row in rows:
        assert row["kind"] in ("code", "machine") and len(row["evidence"]) > 40
        if row["kind"] == "code":
            assert row["same_as"] in ledger_codes and row["value"] in {r["code"] for r in reruns()}
