"""Every `dvc exp run -S ...` command that README.md or docs/*.md shows runs, as written, on the repository's params.

The project here is the real params.yaml (the `small` model and every default) on a generated corpus, with only a
smaller vocabulary, a two-step budget and an evaluation at L and 2L added, so that a documented command cannot fail
unnoticed at its own settings. The evaluation at the default contexts (up to 8x, the copy probe at every distance)
runs in test_pipeline's `dvc repro` and in test_study's grids, on the tiny model; here it took over half of the
seed33m command's time (203 s against 92 s at L and 2L on a 2-core EPYC: the copy probe's 64 spans per distance
cost the same on any corpus).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, base_params, generate_rich_corpus, make_dvc_project, run

# Commands whose values are placeholders, not settings: `-S key=value`, `-S model.pos=...`.
_PLACEHOLDER = re.compile(r"=\.\.\.|key=value")
# Appended to every command: the README's settings stay; only the budget shrinks: two steps, and evaluation at L
# and 2L (still past the training length: extrapolation, context gain and the copy probe up to distance L run).
FEW_STEPS = ["-S", "train.max_steps=2", "-S", "train.eval_interval=1", "-S", "eval.sample_tokens=4"]
FEW_STEPS += ["-S", "eval.contexts=[1,2]"]


def documented_pages() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def documented_commands() -> list[str]:
    text = "\n".join(page.read_text(encoding="utf-8") for page in documented_pages())
    found = re.findall(r"dvc exp run(?: --queue)?(?: -S [^\s`]+)+", text)
    return list(dict.fromkeys(cmd for cmd in found if not _PLACEHOLDER.search(cmd)))


def test_the_docs_show_the_commands_this_module_runs():
    commands = documented_commands()
    assert "dvc exp run -S model.pos=alibi" in commands
    assert any("--queue" in c for c in commands) and any("seed33m" in c for c in commands)
    assert any("train.nproc=8" in c for c in commands) and any("random_chunks" in c for c in commands)
    assert len(commands) >= 9


def test_every_docs_page_is_searched():
    """A command in any docs page is collected: the pages are README.md and every docs/*.md, none missed."""
    pages = {page.relative_to(REPO_ROOT).as_posix() for page in documented_pages()}
    assert "README.md" in pages and "docs/scale-out.md" in pages and "docs/study.md" in pages


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("readme")
    params = base_params()
    params["tokenizer"]["vocab_size"] = 1024  # the generated corpus is a fifth of the real one
    env = make_dvc_project(root, tmp_path_factory.mktemp("mirror"), generate_rich_corpus(), params)
    run(["dvc", "repro", "encode"], root, env)  # the shared data stages once; experiments rerun what they change
    return root, env


def _params(command: str) -> list[str]:
    return [part for part in shlex.split(command)[3:] if part != "--queue"]


def _param(command: str):
    nproc = re.search(r"train\.nproc=(\d+)", command)
    gpus = int(nproc.group(1)) if nproc else 1
    needs_gpus = "train.device=cuda" in command and torch.cuda.device_count() < gpus
    return pytest.param(command, marks=pytest.mark.skipif(needs_gpus, reason=f"needs {gpus} CUDA GPU(s)"))


@pytest.mark.integration
@pytest.mark.parametrize("command", [_param(c) for c in documented_commands()])
def test_documented_command_runs(project, command):
    root, env = project
    try:
        if "--queue" in command:
            _run_queued(root, env, command)
        else:
            out = run(["dvc", "exp", "run", *_params(command), *FEW_STEPS], root, env)
            assert "Running stage 'evaluate'" in out or "Stage 'evaluate' is cached" in out
            assert json.loads((root / "metrics/train.json").read_text())["trained_steps"] == 2
    finally:
        run(["git", "checkout", "--", "params.yaml"], root, env)


# The documented grid is queued whole and checked; only this many of its experiments then run to the end (each
# trains and evaluates the `small` model; test_study runs a whole grid on DVC's queue).
RUN_FROM_QUEUE = 2


def _run_queued(root: Path, env: dict[str, str], command: str) -> None:
    grid = [part.split("=", 1)[1].split(",") for part in _params(command) if "=" in part]
    expected = 1
    for values in grid:
        expected *= len(values)
    run(["dvc", "exp", "run", "--queue", *_params(command), *FEW_STEPS], root, env)
    queued = [line.split()[0] for line in run(["dvc", "queue", "status"], root, env).splitlines() if "Queued" in line]
    assert len(queued) == expected  # the whole grid: every combination of the -S values
    run(["dvc", "queue", "remove", *queued[RUN_FROM_QUEUE:]], root, env)
    run(["dvc", "queue", "start"], root, env)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], root, env)
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(2)
    assert "Failed" not in status, status + _failed_logs(root, env)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root, env))
    names = [exp for rev in shown for exp in (rev.get("experiments") or [])]
    assert len(names) >= RUN_FROM_QUEUE, status


def _failed_logs(root: Path, env: dict[str, str]) -> str:
    status = subprocess.run(["dvc", "queue", "status"], cwd=root, env=env, capture_output=True, text=True).stdout
    logs = []
    for line in status.splitlines():
        if "Failed" in line:
            task = line.split()[0]
            shown = subprocess.run(["dvc", "queue", "logs", task], cwd=root, env=env, capture_output=True, text=True)
            logs.append(shown.stdout[-3000:])
    return "\n".join(logs)
