"""Every reader of checkpoints turns a file that is not one into one line naming it, and `export-hf` deletes nothing
it did not write."""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
import zipfile
from pathlib import Path

import pytest
import torch

from llama_pe.commands.cli import main as cli_main
from llama_pe.core.checkpoint import save_checkpoint
from llama_pe.core.data.tokenizer import MODEL_FILE
from llama_pe.core.evaluate import evaluate_checkpoint
from llama_pe.core.model import build_model
from llama_pe.core.train import Paths, train
from llama_pe.settings.stage import run_stage
from tests.conftest import make_config
from tests.model.conftest import tiny_args

TINY = dict(
    model={"size": "tiny", "dim": 32, "n_heads": 4, "n_kv_heads": 2},
    train={
        "context": 16,
        "batch_size": 8,
        "max_steps": 4,
        "warmup_steps": 1,
        "eval_interval": 2,
        "patience": None,
        "device": "cpu",
        "precision": "fp32",
    },
    eval={"stride": 4, "sample_tokens": 2},
)


@pytest.fixture(scope="module")
def good_checkpoint(data_dirs, tmp_path_factory) -> Path:
    """A tiny rope model with the generated corpus's tokenizer, as the train stage saves one."""
    tokenizer_model = (data_dirs / "tokenizer" / MODEL_FILE).read_bytes()
    torch.manual_seed(0)
    model = build_model(tiny_args(vocab_size=400, pos="rope"))
    path = tmp_path_factory.mktemp("good") / "best.pt"
    save_checkpoint(path, model, tokenizer_model)
    return path


class Unsafe:
    """Any class: torch's weights-only unpickler refuses to build it."""


def _pickled_elsewhere(good: Path, **changes) -> bytes:
    """The good checkpoint with some entries changed, as another version of llama-pe might have written it."""
    checkpoint = torch.load(good, weights_only=True)
    checkpoint.update(changes)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def _zip_of_text() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes/readme.txt", "a zip, but not of a checkpoint")
    return buffer.getvalue()


def _torch_saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def not_checkpoints(good: Path) -> dict[str, bytes | None]:
    """Fourteen kinds of file that are not a readable llama-pe checkpoint; None is a folder."""
    data = good.read_bytes()
    checkpoint = torch.load(good, weights_only=True)
    renamed_args = {("n_head" if k == "n_heads" else k): v for k, v in checkpoint["model_args"].items()}
    other_shapes = {**checkpoint["model_args"], "dim": 64}
    return {
        "text": b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n",
        "empty": b"",
        "random": random.Random(0).randbytes(4096),
        "truncated zip": data[: len(data) // 2],
        "zip header only": data[:64],
        "zip of something else": _zip_of_text(),
        "pickle of a dict": pickle.dumps({"model_args": {}, "model": {}}, protocol=2),
        "torch.save of other weights": _torch_saved({"weights": torch.zeros(3)}),
        "torch.save of a list": _torch_saved([1, 2, 3]),
        "a class the safe unpickler refuses": _torch_saved({"model_args": Unsafe()}),
        "another format version's args": _pickled_elsewhere(good, model_args=renamed_args),
        "weights of another shape": _pickled_elsewhere(good, model_args=other_shapes),
        "a tokenizer that is not SentencePiece": _pickled_elsewhere(good, tokenizer_model=b"\x00not a model"),
        "a folder": None,
    }


def _place(kind: str, content: bytes | None, folder: Path) -> Path:
    path = folder / "best.pt"
    if content is None:
        path.mkdir(parents=True)
        (path / "inside.txt").write_text("a folder where a file should be")
    else:
        folder.mkdir(parents=True)
        path.write_bytes(content)
    return path


def _one_error_line(caplog, run) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as ended:
        run()  # any exception other than SystemExit fails the test: it would be a traceback
    assert ended.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0] and "Traceback" not in errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def kinds(good_checkpoint):
    return not_checkpoints(good_checkpoint)


READERS = ("evaluate", "generate", "export-hf")


def _read_with(reader: str, path: Path, data_dirs: Path, out: Path) -> None:
    """One reader of checkpoints, as its command runs it (run_stage turns project errors into one line, exit 1)."""
    if reader == "evaluate":
        files = [out / name for name in ("eval.json", "curve.json", "samples.txt", "context_use")]
        run_stage(lambda: evaluate_checkpoint(make_config(**TINY), path, data_dirs / "encoded", *files))
    elif reader == "generate":
        cli_main(["generate", "--checkpoint", str(path), "--prompt", "A", "--tokens", "2"])
    else:
        cli_main(["export-hf", str(path), str(out / "hf")])


@pytest.mark.parametrize("reader", READERS)
def test_every_kind_of_file_that_is_not_a_checkpoint_is_one_line_naming_it(reader, kinds, data_dirs, tmp_path, caplog):
    assert len(kinds) >= 10
    for number, (kind, content) in enumerate(kinds.items()):
        path = _place(kind, content, tmp_path / str(number))
        out = tmp_path / f"out{number}"
        line = _one_error_line(caplog, lambda: _read_with(reader, path, data_dirs, out))  # noqa: B023 - called at once
        assert str(path) in line, (kind, line)
        assert "checkpoint" in line and "dvc checkout" not in line, (kind, line)  # no DVC repo here
        assert not out.exists()  # nothing written: no export folder, no metrics


def test_training_sets_every_kind_of_damaged_last_checkpoint_aside_and_starts_afresh(
    kinds, data_dirs, tmp_path, caplog
):
    for number, (kind, content) in enumerate(kinds.items()):
        folder = tmp_path / str(number)
        last = _place(kind, content, folder / "models").with_name("last.pt")
        (folder / "models/best.pt").rename(last)
        paths = Paths(
            data_dirs / "encoded",
            data_dirs / "tokenizer",
            folder / "models/best.pt",
            last,
            folder / "train.json",
            folder / "live",
        )
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert train(make_config(**TINY), paths, stop_after=2) is None
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and str(last) in warnings[0] and "\n" not in warnings[0], (kind, warnings)
        assert "training starts from scratch" in warnings[0]
        aside = last.with_name("last.pt.damaged")
        assert aside.is_dir() if content is None else aside.read_bytes() == content
        assert last.is_file()  # the fresh run's own checkpoint


# ---------------------------------------------------------------------------------------------- export-hf's output


@pytest.fixture
def export(good_checkpoint, caplog):
    """Run `llama-pe export-hf`; the one error line, or None when it succeeded."""

    def run(out: Path | str, *flags: str, checkpoint: Path = good_checkpoint) -> str | None:
        try:
            cli_main(["export-hf", str(checkpoint), str(out), *flags])
        except SystemExit as ended:
            assert ended.code == 1
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            caplog.clear()
            assert len(errors) == 1, errors
            return errors[0]
        return None

    return run


def test_a_folder_with_files_in_it_is_refused_without_force_and_replaced_with_it(export, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    line = export(out)
    assert line == (
        f"export-hf: {out} exists and is a folder that is not empty; give a new or empty folder, or add --force to "
        f"replace it (everything in it is deleted)"
    )
    assert (out / "notes.txt").read_text() == "keep"
    assert export(out, "--force") is None
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()


def test_a_new_or_empty_folder_needs_no_force_and_no_temporary_is_left(export, tmp_path):
    (tmp_path / "empty").mkdir()
    assert export(tmp_path / "empty") is None and export(tmp_path / "new" / "hf") is None
    for folder in (tmp_path / "empty", tmp_path / "new" / "hf"):
        assert (folder / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["hf"]


def test_a_file_at_the_output_path_is_refused_without_force(export, tmp_path):
    out = tmp_path / "hf"
    out.write_text("a file")
    assert export(out) == (
        f"export-hf: {out} exists and is a file; give a new or empty folder, or add --force to replace it "
        f"(everything in it is deleted)"
    )
    assert out.read_text() == "a file"
    assert export(out, "--force") is None and (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".hf.*"))  # the file moved aside is gone too


def test_the_folder_that_holds_the_checkpoint_is_refused_even_with_force(export, good_checkpoint, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("best.pt", "last.pt"):
        (models / name).write_bytes(good_checkpoint.read_bytes())
    before = {p.name: p.read_bytes() for p in models.iterdir()}
    for out, flags in [
        (models, ()),
        (models, ("--force",)),
        (tmp_path, ("--force",)),
        (models / "best.pt", ("--force",)),
    ]:
        line = export(out, *flags, checkpoint=models / "best.pt")
        assert line.startswith(f"export-hf: the output {out} holds the checkpoint {models / 'best.pt'} it would export")
    assert {p.name: p.read_bytes() for p in models.iterdir()} == before


def test_an_output_that_cannot_be_written_is_one_line_naming_it(export, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert (
        export(blocker / "hf")
        == f"export-hf: cannot write {blocker / 'hf'}: {blocker} is not a folder this user can write in"
    )
    if Path("/proc/self").exists():
        line = export("/proc/hfm")
        assert line.startswith("export-hf: cannot write /proc/hfm")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert export(locked / "hf").startswith(f"export-hf: cannot write {locked / 'hf'}")
