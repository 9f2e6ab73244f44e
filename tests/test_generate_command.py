"""`llama-pe generate` on a tiny checkpoint: the text streamed token by token, prompts from stdin, clear errors."""

from __future__ import annotations

import io

import pytest
import sentencepiece as spm
import torch

from llama_pe.commands.generate_command import generate_text
from llama_pe.core.checkpoint import CheckpointError, save_checkpoint
from llama_pe.core.data.tokenizer import MODEL_FILE
from llama_pe.core.generate import generate
from llama_pe.core.model import build_model
from llama_pe.errors import ConfigError
from tests.model.conftest import tiny_args


class Recorder(io.StringIO):
    """stdout that remembers each write, to tell streamed text from text written at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture(scope="module")
def checkpoint(data_dirs, tmp_path_factory):
    """A tiny untrained model (learned positions of 16, so long generations slide their window) and the tokenizer."""
    tokenizer_model = (data_dirs / "tokenizer" / MODEL_FILE).read_bytes()
    sp = spm.SentencePieceProcessor(model_proto=tokenizer_model)
    torch.manual_seed(0)
    model = build_model(tiny_args(vocab_size=sp.get_piece_size(), pos="learned", max_seq_len=16))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, model, tokenizer_model)
    return path, model, sp


def test_streams_the_continuation_that_generate_samples(checkpoint):
    path, model, sp = checkpoint
    out = Recorder()
    text = generate_text(str(path), None, "ROMEO:\nWhat", tokens=40, temperature=0.8, top_k=20, seed=3, out=out)
    prompt_ids = sp.encode("ROMEO:\nWhat")
    expected = sp.decode(prompt_ids + generate(model, prompt_ids, 40, 0.8, 20, seed=3))[len(sp.decode(prompt_ids)) :]
    assert text == expected  # 40 tokens past a 16-position table: the window slid, as in the samples
    assert out.getvalue() == "ROMEO:\nWhat" + expected + "\n"
    assert out.writes[0] == "ROMEO:\nWhat" and len(out.writes) > 10  # the prompt, then piece after piece


def test_reads_the_prompt_from_stdin(checkpoint):
    path, _, _ = checkpoint
    from_stdin, given = Recorder(), Recorder()
    generate_text(str(path), None, "-", 8, 0.0, None, 0, out=from_stdin, stdin=io.StringIO("KING:\nNow"))
    generate_text(str(path), None, "KING:\nNow", 8, 0.0, None, 0, out=given)
    assert from_stdin.getvalue() == given.getvalue() and given.getvalue().startswith("KING:\nNow")


@pytest.mark.parametrize(
    ("prompt", "tokens", "temperature", "top_k", "message"),
    [
        ("", 5, 0.8, 40, r"--prompt: '' tokenizes to no token; give some text to continue"),
        ("A", 0, 0.8, 40, r"--tokens: expected a positive number of tokens, got 0"),
        ("A", 5, -1.0, 40, r"--temperature: expected 0 \(greedy\) or a finite number above, got -1.0"),
        ("A", 5, float("nan"), 40, r"--temperature: expected 0 \(greedy\) or a finite number above, got nan"),
        ("A", 5, float("inf"), 40, r"--temperature: expected 0 \(greedy\) or a finite number above, got inf"),
        ("A\udcff", 5, 0.8, 40, r"--prompt: not UTF-8 text \(byte 0xff at character 1\)"),
        ("A", 5, 0.8, -3, r"--top-k: expected a positive integer, or 0 for no limit; got -3"),
    ],
)
def test_bad_input_is_a_clear_error(checkpoint, prompt, tokens, temperature, top_k, message):
    path, _, _ = checkpoint
    with pytest.raises(ConfigError, match=message):
        generate_text(str(path), None, prompt, tokens, temperature, top_k, 0, out=io.StringIO())


def test_a_checkpoint_path_that_is_not_there_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"--checkpoint: no file at .*nothing\.pt; give the path of a checkpoint"):
        generate_text(str(tmp_path / "nothing.pt"), None, "A", 5, 0.8, 40, 0, out=io.StringIO())


def test_a_file_that_is_not_a_checkpoint_gets_advice_that_fits_a_file_outside_the_pipeline(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(
        CheckpointError,
        match=r"^.*notes\.txt is not a checkpoint \(torch.save writes a zip archive, "
        r"and this is none\); give a checkpoint that the `train` stage wrote",
    ) as raised:
        generate_text(str(tmp_path / "notes.txt"), None, "A", 5, 0.8, 40, 0, out=io.StringIO())
    assert "dvc" not in str(raised.value)  # no DVC repo around it: no DVC command can help


def test_a_prompt_of_bytes_that_are_not_utf8_is_a_clear_error_from_stdin_too(checkpoint):
    import subprocess
    import sys

    path, _, _ = checkpoint
    command = [sys.executable, "-m", "llama_pe.commands.cli", "generate", "--checkpoint", str(path), "--prompt", "-"]
    done = subprocess.run(command, input=b"\xff\xfe", capture_output=True, timeout=120)
    assert done.returncode != 0 and b"Traceback" not in done.stderr
    assert b"--prompt: not UTF-8 text" in done.stderr


def test_a_reader_that_stops_early_ends_the_stream_quietly(checkpoint):
    import subprocess
    import sys

    path, _, _ = checkpoint
    # --tokens 50000: more than a pipe holds, so the writer must meet the closed end
    options = ["--checkpoint", str(path), "--prompt", "ROMEO", "--tokens", "50000"]
    command = [sys.executable, "-m", "llama_pe.commands.cli", "generate", *options]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        assert process.stdout.read(5) == "ROMEO"
        process.stdout.close()  # as `| head -c 5` does
        stderr = process.stderr.read()
        assert process.wait(timeout=120) == 141
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_checkpoint_and_exp_together_are_refused(checkpoint):
    path, _, _ = checkpoint
    with pytest.raises(ConfigError, match="--checkpoint and --exp name two models; give one"):
        generate_text(str(path), "rope-seed1", "A", 5, 0.8, 40, 0, out=io.StringIO())
