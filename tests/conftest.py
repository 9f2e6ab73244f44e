"""Shared fixtures: a small generated corpus and configs built from the repo's own params.yaml."""

from __future__ import annotations

import copy
import hashlib
import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from llama_pe.settings.config import Config, config_from_dict

# Under pytest-xdist (pyproject.toml's `-n auto`) the workers share the cores: each one, and the DVC, stage and
# torchrun processes it starts, computes on one thread, so that no worker's OpenMP threads wait on another's.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
_WORDS = (
    "thou art the king and I thy humble servant what say you now my lord "
    "speak hear me gentle sweet love death honour crown sword night day"
).split()
_SPEAKERS = ["KING HENRY", "First Citizen", "ROMEO", "LADY CAPULET", "Clown"]


def generate_corpus(n_speeches: int = 400, seed: int = 0) -> str:
    """Shakespeare-shaped text: speaker lines, verse lines, blank lines, punctuation, odd spacing, accents."""
    rng = random.Random(seed)
    speeches = []
    for _ in range(n_speeches):
        lines = [f"{rng.choice(_SPEAKERS)}:"]
        for _ in range(rng.randint(1, 4)):
            words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 9))]
            words[0] = words[0].capitalize()
            lines.append(" ".join(words) + rng.choice([",", ".", "!", "?", ";", "--", ""]))
        speeches.append("\n".join(lines) + "\n")
    # A run of spaces, a tab and non-ASCII characters: a lossless tokenizer must keep all of them.
    return "\n".join(speeches) + "Adieu,  café\tnaïve!\n"


def generate_rich_corpus(n_speeches: int = 1500, seed: int = 0) -> str:
    """Like generate_corpus, over a few thousand made-up words, so that a 4096-piece BPE can be learnt from it."""
    rng = random.Random(seed)
    syllables = "ba ke lo mi nu ra sto the qua vel dor fin gar hal jin zu pre wyn ox el".split()
    words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(6000)})
    speeches = []
    for _ in range(n_speeches):
        lines = [f"{rng.choice(_SPEAKERS)}:"]
        for _ in range(rng.randint(1, 4)):
            line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
            lines.append(line.capitalize() + rng.choice([",", ".", "!", "?", ";", ""]))
        speeches.append("\n".join(lines) + "\n")
    return "\n".join(speeches)


@pytest.fixture(scope="session")
def corpus() -> str:
    return generate_corpus()


def committed_text(relative: str) -> str:
    """A file of this repository as HEAD holds it. Tests never read the workspace's params.yaml or metrics: a
    user's `dvc exp run -S ...` or `dvc repro` rewrites those, and must not break `pytest`."""
    shown = subprocess.run(["git", "show", f"HEAD:{relative}"], cwd=REPO_ROOT, capture_output=True, text=True)
    if shown.returncode == 0:
        return shown.stdout
    if not (REPO_ROOT / ".git").exists():  # a source copy without git: its files are all there is
        return (REPO_ROOT / relative).read_text(encoding="utf-8")
    raise AssertionError(f"git show HEAD:{relative} failed: {shown.stderr.strip()}")


_COMMITTED_COPIES = Path(tempfile.mkdtemp(prefix="llama-pe-committed-"))


def committed_path(relative: str) -> Path:
    """A copy of HEAD's file (committed_text) on disk, for code that reads a path (params.yaml)."""
    copy_path = _COMMITTED_COPIES / relative
    if not copy_path.exists():
        copy_path.parent.mkdir(parents=True, exist_ok=True)
        copy_path.write_text(committed_text(relative), encoding="utf-8")
    return copy_path


def base_params() -> dict[str, Any]:
    return yaml.safe_load(committed_text("params.yaml"))


def make_config(**sections: dict[str, Any]) -> Config:
    """The repo's params.yaml with some settings replaced, e.g. make_config(tokenizer={"vocab_size": 300})."""
    params = copy.deepcopy(base_params())
    for section, values in sections.items():
        params[section].update(values)
    return config_from_dict(params)


@pytest.fixture(scope="session")
def data_dirs(corpus, tmp_path_factory) -> Path:
    """tokenizer/ and encoded/ folders for the generated corpus, as the tokenizer and encode stages make them."""
    return make_data_dirs(corpus, tmp_path_factory.mktemp("data"), make_config(tokenizer={"vocab_size": 400}))


def tiny_pipeline_params(sample_tokens: int = 4, **train: Any) -> dict[str, Any]:
    """The repo's params.yaml for a tiny model on a generated corpus: what the tests that run DVC train."""
    params = base_params()
    params["tokenizer"]["vocab_size"] = 400
    params["model"].update(size="tiny", dim=32, n_heads=4, n_kv_heads=2)
    params["eval"].update(stride=4, sample_tokens=sample_tokens)
    defaults = dict(context=16, batch_size=8, max_steps=6, warmup_steps=2, eval_interval=2, device="cpu", patience=None)
    params["train"].update({**defaults, **train})
    return params


def make_data_dirs(corpus: str, root: Path, cfg: Config) -> Path:
    from llama_pe.core.data.encode import encode_corpus
    from llama_pe.core.data.tokenizer import save_tokenizer, train_tokenizer

    (root / "corpus.txt").write_text(corpus, encoding="utf-8")
    save_tokenizer(train_tokenizer(corpus, cfg.tokenizer), root / "tokenizer")
    encode_corpus(root / "corpus.txt", root / "tokenizer", root / "encoded", cfg)
    return root


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run a command that must succeed; its output, or a failure that shows it."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def make_dvc_project(root: Path, mirror: Path, text: str, params: dict[str, Any]) -> dict[str, str]:
    """A git + DVC repo at root holding a copy of the pipeline (dvc.yaml, stages, library) and `params`, its
    corpus served by a mirror folder; returns the environment to run git and DVC in (own identity, no analytics)."""
    (mirror / "tinyshakespeare.txt").write_text(text, encoding="utf-8")
    for item in ("dvc.yaml", "stages", "src"):
        source = REPO_ROOT / item
        if source.is_dir():
            shutil.copytree(source, root / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, root / item)
    params = copy.deepcopy(params)
    params["data"]["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    params["data"]["url"] = (mirror / "not-here.txt").as_uri()  # the mirror must be what serves the file
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("/data/\n/models/\n__pycache__/\n")
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "LLAMA_PE_MIRROR": str(mirror),
        "GIT_AUTHOR_NAME": "llama-pe tests",
        "GIT_AUTHOR_EMAIL": "tests@llama-pe.invalid",
        "GIT_COMMITTER_NAME": "llama-pe tests",
        "GIT_COMMITTER_EMAIL": "tests@llama-pe.invalid",
    }
    run(["git", "init", "-q"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["dvc", "config", "core.analytics", "false"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "pipeline"], root, env)  # DVCLive and `dvc exp` need a commit
    return env
