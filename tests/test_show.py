"""`llama-pe show`: the experiments that compare encodings, readable in a terminal of 120 columns."""

from __future__ import annotations

import pytest

from llama_pe.commands.show import DEFAULT_COLUMNS, ShowError, table, varying_params


def record(rev: str, name: str | None, pos: str, seed: int, loss: float, **more) -> dict:
    """A record as dvc.api.exp_show gives it: floats for integers, DVC's own keys, every param and metric."""
    return {
        "Experiment": name,
        "rev": rev,
        "State": "Success" if name else None,
        "model.pos": pos,
        "model.impl": "native",
        "train.seed": float(seed),
        "train.lr": 0.002,
        "best_val_loss": loss,
        "test_ppl": 308.14159,
        "ppl_at_8x": None,  # learned positions: no 8x
        **{f"metric_{i}": 1.0 for i in range(60)},  # the diagnostics that make `dvc exp show` unreadable
        **more,
    }


RECORDS = [
    record("workspace", None, "rope", 0, 5.123024),
    record("a1b2c3d4e5f6", None, "rope", 0, 5.123024),
    record("0f9e8d7c6b5a", "alibi-seed-3-with-a-rather-long-name-from-a-study", "alibi", 3, 5.117303),
]


def test_the_default_columns_fit_120_columns_with_every_experiment_named():
    text = table(RECORDS, list(DEFAULT_COLUMNS), width=120)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 120
    assert lines[0].split() == ["experiment", *DEFAULT_COLUMNS]  # nothing left out
    assert lines[2].split()[:2] == ["workspace", "rope"]
    alibi = lines[4].split()
    assert alibi[0].startswith("alibi-seed-3-with-a") and alibi[0].endswith("…") and alibi[1] == "(0f9e8d7)"
    assert alibi[2:] == ["alibi", "native", "3", "0.002", "5.1173", "308.14", "-"]  # integers as integers, null as -


def test_a_narrow_terminal_shortens_names_then_leaves_out_the_least_needed_columns_and_says_so():
    text = table(RECORDS, [*DEFAULT_COLUMNS, "metric_7"], width=64)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 64
    assert lines[0].split() == ["experiment", "model.pos", "train.seed", "best_val_loss", "test_ppl"]
    assert "…" in lines[4]  # the long name, shortened in the middle
    assert " ".join(lines[-2:]) == (
        "(left out for the width of 64 columns: metric_7, model.impl, train.lr, ppl_at_8x; widen the terminal)"
    )


def test_a_running_experiment_shows_its_state_and_an_unknown_column_is_refused():
    running = [*RECORDS, {**record("123456789abc", "queued-one", "nope", 0, None), "State": "Running"}]
    lines = table(running, list(DEFAULT_COLUMNS), width=120).splitlines()
    assert lines[0].split()[:2] == ["experiment", "state"] and "Running" in lines[-1].split()
    with pytest.raises(ShowError, match=r"^--columns model\.poss: not a param or metric of these experiments"):
        table(RECORDS, [*DEFAULT_COLUMNS, "model.poss"], width=120)


def test_a_param_in_which_the_experiments_differ_is_shown_beside_the_default_columns():
    tiny = record("1234567abcdef", "tiny-run", "rope", 0, 8.358, **{"model.size": "tiny", "train.max_steps": 20.0})
    records = [*(dict(r, **{"model.size": "small", "train.max_steps": 400.0}) for r in RECORDS), tiny]
    assert varying_params(records, DEFAULT_COLUMNS) == ["model.size", "train.max_steps"]
    text = table(records, [*DEFAULT_COLUMNS, *varying_params(records, DEFAULT_COLUMNS)], 200)
    assert text.splitlines()[0].split()[-2:] == ["model.size", "train.max_steps"]
    assert "tiny" in text.splitlines()[-1] and varying_params(RECORDS, DEFAULT_COLUMNS) == []
