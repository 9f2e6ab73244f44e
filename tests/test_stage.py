"""A stage run by DVC fails, naming the keys, when the params it depends on changed while it ran."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from llama_pe.settings.stage import run_stage, stage_param_keys

DVC_YAML = {
    "stages": {
        "train": {"cmd": "python stages/train.py", "params": ["model", "train.lr", {"other.yaml": ["seed"]}]},
        "plot": {"cmd": "python stages/plot.py"},
    }
}
PARAMS = {"model": {"pos": "rope", "dim": 32}, "train": {"lr": 0.002, "seed": 0}, "eval": {"top_k": 40}}


@pytest.fixture
def dvc_stage(tmp_path, monkeypatch) -> Path:
    """A repo root with dvc.yaml and params files, and the environment DVC gives the `train` stage's command."""
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"seed": 1}))
    monkeypatch.setenv("DVC_STAGE", "train")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    return tmp_path


def edit(path: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load(path.read_text())
    params.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(params))


def test_the_keys_a_stage_depends_on_come_from_dvc_yaml(dvc_stage):
    assert stage_param_keys(dvc_stage, "train") == {
        dvc_stage / "params.yaml": ["model", "train.lr"],
        dvc_stage / "other.yaml": ["seed"],
    }
    assert stage_param_keys(dvc_stage, "plot") == {}
    assert stage_param_keys(dvc_stage, "no-such-stage") == {dvc_stage / "params.yaml": None}  # all: stricter


@pytest.mark.parametrize(
    ("section", "key", "value", "named"),
    [
        ("model", "pos", "alibi", "model.pos: 'rope' -> 'alibi'"),
        ("model", "n_heads", 5, "model.n_heads: '(missing)' -> 5"),  # a key added to a watched section
        ("train", "lr", 0.004, "train.lr: 0.002 -> 0.004"),
    ],
)
def test_a_watched_param_changed_while_the_stage_ran_fails_it_naming_the_key(
    dvc_stage, caplog, section, key, value, named
):
    with pytest.raises(SystemExit) as ended:
        run_stage(lambda: edit(dvc_stage / "params.yaml", section, key, value))
    assert ended.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(f"params changed while the `train` stage ran ({named})")
    assert "DVC records nothing" in errors[0]


def test_a_watched_key_of_another_params_file_counts_too(dvc_stage, caplog):
    with pytest.raises(SystemExit):
        run_stage(lambda: (dvc_stage / "other.yaml").write_text("seed: 2\n"))
    assert "seed: 1 -> 2" in caplog.text


def test_params_the_stage_does_not_depend_on_may_change(dvc_stage):
    run_stage(lambda: edit(dvc_stage / "params.yaml", "eval", "top_k", 10))
    run_stage(lambda: edit(dvc_stage / "params.yaml", "train", "seed", 3))  # train.lr only is watched


def test_outside_dvc_nothing_is_watched(dvc_stage, monkeypatch):
    monkeypatch.delenv("DVC_STAGE")
    run_stage(lambda: edit(dvc_stage / "params.yaml", "model", "pos", "alibi"))
