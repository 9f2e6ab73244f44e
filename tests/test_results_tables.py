"""docs/results.md's tables are the committed reports' numbers: each block between its markers is what
llama_pe.analysis.results_tables makes of reports/ (and reports/converged/)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from llama_pe.analysis.results_tables import RESULTS, TABLES, block_in, blocks, rewrite
from tests.conftest import REPO_ROOT, committed_text


@pytest.mark.parametrize("name", list(TABLES))
def test_each_table_of_the_results_page_is_made_from_the_committed_report(name):
    held = block_in(committed_text(RESULTS), name)
    assert held is not None, f"{RESULTS} has no block {name}"
    assert held == blocks(REPO_ROOT)[name], (
        f"{RESULTS}'s table {name} differs from reports/: run `python -m llama_pe.analysis.results_tables`"
    )


def test_a_changed_number_in_the_report_changes_the_table_and_rewrite_puts_it_back(tmp_path):
    for folder in {folder for folder, _ in TABLES.values()}:
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder, dirs_exist_ok=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / RESULTS).write_text(committed_text(RESULTS))
    path = tmp_path / "reports/summary.csv"
    summary = pd.read_csv(path)
    rope_loss = (
        (summary["model.pos"] == "rope") & (summary["model.impl"] == "native") & (summary["metric"] == "best_val_loss")
    )
    summary.loc[rope_loss, "mean"] = 9.87654
    summary.to_csv(path, index=False)
    assert "9.877 ± " in blocks(tmp_path)["main"] and "9.877" not in (tmp_path / RESULTS).read_text()
    rewrite(tmp_path)
    assert block_in((tmp_path / RESULTS).read_text(), "main") == blocks(tmp_path)["main"]
