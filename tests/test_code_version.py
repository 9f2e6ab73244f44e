"""The code version means "the same computation": a pure refactor or an encoding added beside a run keeps it; an
edit to what the run computes changes it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from llama_pe.tracking.code_version import CodeVersionError, code_version, raw_code_version
from tests.conftest import REPO_ROOT
from tests.test_encodings import NEW_ENCODING

ROPE, ALIBI, P_ROPE = ({"model": {"pos": name}} for name in ("rope", "alibi", "p_rope"))
OPTIMIZER = "src/llama_pe/core/optimizer.py"  # the learning-rate schedule, which every run computes


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
    return subprocess.run(["git", *identity, *args], cwd=repo, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def project(tmp_path) -> Path:
    """A git repository with the project's stages, library, dvc.yaml and params.yaml as HEAD has them."""
    listed = git(REPO_ROOT, "ls-files", "-z", "--", "stages", "src", "dvc.yaml", "params.yaml").split("\0")
    git(tmp_path, "init", "-q")
    for path in filter(None, listed):
        if (REPO_ROOT / path).is_file():
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO_ROOT / path, tmp_path / path)
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "the project")
    return tmp_path


def edit(repo: Path, path: str, old: str, new: str) -> None:
    file = repo / path
    text = file.read_text()
    assert old in text, f"{path} no longer holds {old!r}: update the test"
    file.write_text(text.replace(old, new, 1))


def test_an_encoding_added_beside_rope_leaves_ropes_code_version_as_it_was(project):
    rope, alibi = code_version(project, params=ROPE), code_version(project, params=ALIBI)
    assert rope != alibi and code_version(project, "HEAD", ROPE) == rope
    (project / "src/llama_pe/positions/doubled.py").write_text(NEW_ENCODING)
    git(project, "add", "-A")  # staged: a queued experiment runs it
    assert (code_version(project, params=ROPE), code_version(project, params=ALIBI)) == (rope, alibi)
    assert code_version(project, params={"model": {"pos": "doubled"}}) not in (rope, alibi)


def test_an_edit_to_ropes_frequencies_changes_ropes_code_version_and_not_alibis(project):
    rope, alibi = code_version(project, params=ROPE), code_version(project, params=ALIBI)
    p_rope = code_version(project, params=P_ROPE)
    edit(
        project,
        "src/llama_pe/positions/rope.py",
        "angles = torch.cat((angles, angles), dim=-1)",
        "angles = torch.cat((angles, 2 * angles), dim=-1)",
    )
    assert code_version(project, params=ROPE) != rope
    assert code_version(project, params=ALIBI) == alibi
    assert code_version(project, params=P_ROPE) != p_rope  # its class is rope's, with fewer frequencies
    git(project, "checkout", "-q", "--", ".")
    # The frequencies every rotary scaling starts from: in every run's code (the model imports it), so both change.
    edit(project, "src/llama_pe/core/model/rope_scaling.py", "return 1.0 / (theta **", "return 1.0 / (2 * theta **")
    assert code_version(project, params=ROPE) != rope and code_version(project, params=ALIBI) != alibi


def test_a_pure_refactor_keeps_the_code_version(project):
    before = code_version(project, params=ROPE)
    # Docstrings, comments, annotations and layout are no computation.
    edit(
        project,
        "src/llama_pe/positions/rope.py",
        '"""RoPE in the rotate-half layout',
        '"""Rotary positions in the rotate-half layout',
    )
    edit(
        project,
        OPTIMIZER,
        "def lr_at(step: int, cfg: TrainConfig) -> float:",
        "def lr_at(step,  cfg):  # moved nowhere",
    )
    assert code_version(project, params=ROPE) == before
    # A function moved to a module of its own, imported from there: the same statements, elsewhere.
    optimizer = project / OPTIMIZER
    text = optimizer.read_text()
    start = text.index("def lr_at(")
    end = text.index("\n\n\n", start)
    (project / "src/llama_pe/core/schedule.py").write_text(
        "import math\n\nfrom llama_pe.settings.config import TrainConfig\n\n\n" + text[start:end] + "\n"
    )
    header = text[:start].replace(
        "from llama_pe.settings", "from llama_pe.core.schedule import lr_at\nfrom llama_pe.settings"
    )
    optimizer.write_text(header + text[end + 3 :])
    git(project, "add", "-A")
    assert code_version(project, params=ROPE) == before
    # ... but a change of a statement is a change of the computation.
    edit(project, "src/llama_pe/core/schedule.py", "math.cos(", "math.sin(")
    assert code_version(project, params=ROPE) != before


def test_a_recorded_equivalence_names_the_new_version_as_the_old(project):
    old = code_version(project, params=ROPE)
    edit(project, OPTIMIZER, "def lr_at(", "def learning_rate_at(")  # a rename: a new version
    new = raw_code_version(project, params=ROPE)
    assert new != old and code_version(project, params=ROPE) == new
    (project / "reports").mkdir()
    (project / "reports/same_computation.csv").write_text(f"kind,value,same_as,evidence\ncode,{new},{old},reruns\n")
    assert code_version(project, params=ROPE) == old


def test_a_file_that_is_not_python_is_named(project):
    (project / "src/llama_pe/positions/rope.py").write_text("def broken(:\n")
    with pytest.raises(CodeVersionError, match=r"src/llama_pe/positions/rope\.py: not Python"):
        code_version(project, params=ROPE)
