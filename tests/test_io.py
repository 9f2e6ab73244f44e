import json

import pytest

from llama_pe.io import atomic_path, write_json


def test_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_failed_directory_write_keeps_the_old_directory(tmp_path):
    target = tmp_path / "tok"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target, directory=True) as tmp:
        (tmp / "new").write_text("new")
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]
    assert [p.name for p in target.iterdir()] == ["old"]


def test_directory_is_replaced_whole(tmp_path):
    target = tmp_path / "tok"
    target.mkdir()
    (target / "old").write_text("old")
    with atomic_path(target, directory=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]
    assert [p.name for p in target.iterdir()] == ["new"]


def test_write_json_creates_parents(tmp_path):
    write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert json.loads((tmp_path / "a" / "b.json").read_text()) == {"x": 1}
