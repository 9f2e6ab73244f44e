import json
import os
import subprocess
import sys

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


def test_a_writer_killed_mid_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "out.txt"
    script = (
        "import os, signal, sys\n"
        "from llama_pe.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True)
    assert killed.returncode == -9
    assert not target.exists() and len(list(tmp_path.iterdir())) == 1  # the killed writer's temporary
    with atomic_path(target) as tmp:
        # Another writer's temporary, alive (this process): not touched.
        assert sorted(p.name for p in tmp_path.iterdir()) == [tmp.name]
        assert tmp.name.startswith(f".out.txt.{os.getpid()}.")
        tmp.write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"] and target.read_text() == "whole"
