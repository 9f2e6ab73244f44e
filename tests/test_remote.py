"""Outputs and experiments travel through remotes: a DVC remote on S3 (moto's server) and a git remote (a bare repo).

Everything runs against moto's S3 server on 127.0.0.1 with made-up credentials, so no network and no account.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import generate_corpus, make_dvc_project, run, tiny_pipeline_params

pytestmark = pytest.mark.integration

BUCKET = "llama-pe"
OUTPUTS = ("data/raw/tinyshakespeare.txt", "data/tokenizer", "data/encoded", "models/best.pt")  # DVC-cached


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free local port, with one bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def aws_env(env: dict[str, str]) -> dict[str, str]:
    # Credentials come from the environment, as the README says; moto accepts any.
    return {
        **env,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory, s3_endpoint) -> tuple[Path, dict[str, str], Path]:
    """A pipeline repo with the S3 remote as its default DVC remote and a bare repo as its git remote."""
    root = tmp_path_factory.mktemp("remote") / "origin-work"
    root.mkdir()
    params = tiny_pipeline_params()
    env = aws_env(make_dvc_project(root, tmp_path_factory.mktemp("mirror"), generate_corpus(600, seed=1), params))
    # The README's commands: an S3 remote, its endpoint for an S3-compatible store.
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{BUCKET}/dvcstore"], root, env)
    run(["dvc", "remote", "modify", "storage", "endpointurl", s3_endpoint], root, env)
    bare = root.parent / "origin.git"
    run(["git", "init", "-q", "--bare", str(bare)], root, env)
    run(["git", "remote", "add", "origin", str(bare)], root, env)
    run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "default run and its remotes"], root, env)
    run(["git", "push", "-q", "origin", "HEAD:main"], root, env)
    return root, env, bare


def digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    sha = hashlib.sha256()
    for file in files:
        sha.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        sha.update(file.read_bytes())
    return sha.hexdigest()


def test_every_output_goes_to_s3_and_comes_back_byte_identical(project):
    root, env, _ = project
    before = {out: digest(root / out) for out in OUTPUTS}
    run(["dvc", "push"], root, env)
    shutil.rmtree(root / ".dvc" / "cache")
    for out in OUTPUTS:
        (shutil.rmtree if (root / out).is_dir() else Path.unlink)(root / out)
    run(["dvc", "pull"], root, env)
    assert {out: digest(root / out) for out in OUTPUTS} == before
    assert "Cache and remote 'storage' are in sync" in run(["dvc", "status", "--cloud"], root, env)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], root, env)


def clone(bare: Path, where: Path, env: dict[str, str]) -> Path:
    run(["git", "clone", "-q", "--branch", "main", str(bare), str(where)], where.parent, env)
    return where


def experiment_metrics(root: Path, env: dict[str, str]) -> dict[str, dict]:
    """Each experiment's name -> its metrics, from `dvc exp show --json`."""
    shown = json.loads(run(["dvc", "exp", "show", "--json", "-A"], root, env))
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            revision = exp["revs"][0]
            metrics = revision["data"]["metrics"]
            found[exp["name"]] = {k: v for file in metrics.values() for k, v in file["data"].items()}
    return found


def test_an_experiment_travels_with_its_model_to_a_clone_that_evaluates_and_exports_it(project, tmp_path):
    root, env, bare = project
    run(["dvc", "exp", "run", "-n", "rope-seed1", "-S", "train.seed=1"], root, env)
    run(["dvc", "exp", "push", "origin", "rope-seed1"], root, env)  # git refs to origin, outputs to the S3 remote

    other = clone(bare, tmp_path / "other", env)
    run(["dvc", "exp", "pull", "origin", "rope-seed1"], other, env)
    metrics = experiment_metrics(other, env)["rope-seed1"]
    assert metrics["best_val_loss"] == experiment_metrics(root, env)["rope-seed1"]["best_val_loss"]

    run(["dvc", "exp", "apply", "rope-seed1"], other, env)
    run(["dvc", "checkout"], other, env)  # the model from the cache `dvc exp pull` filled: no training
    assert "Data and pipelines are up to date" in run(["dvc", "status"], other, env)
    out = run(["dvc", "repro", "--force", "--single-item", "evaluate"], other, env)
    assert "Running stage 'evaluate'" in out and "Running stage 'train'" not in out
    evaluated = json.loads((other / "metrics" / "eval.json").read_text())
    assert evaluated["test_loss"] == pytest.approx(metrics["test_loss"], abs=1e-6)
    run(["llama-pe", "export-hf", "models/best.pt", "hf-model"], other, env)
    assert (other / "hf-model" / "model.safetensors").is_file()


def test_a_grid_split_across_two_clones_is_gathered_in_a_third(project, tmp_path):
    _, env, bare = project
    for seed in (2, 3):
        worker = clone(bare, tmp_path / f"worker{seed}", env)
        run(["dvc", "pull"], worker, env)  # the data stages' outputs, so that only training runs here
        run(
            ["dvc", "exp", "run", "-n", f"alibi-seed{seed}", "-S", "model.pos=alibi", "-S", f"train.seed={seed}"],
            worker,
            env,
        )
        run(["dvc", "exp", "push", "origin", f"alibi-seed{seed}"], worker, env)
    gatherer = clone(bare, tmp_path / "gatherer", env)
    run(["dvc", "exp", "pull", "origin", "alibi-seed2", "alibi-seed3"], gatherer, env)
    table = experiment_metrics(gatherer, env)
    assert {"alibi-seed2", "alibi-seed3"} <= set(table)
    assert all(table[name]["best_val_loss"] > 0 for name in ("alibi-seed2", "alibi-seed3"))
