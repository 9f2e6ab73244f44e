"""`llama-pe generate`: continue a prompt with a trained model, the text streamed to stdout as it is sampled."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import sentencepiece as spm
import torch

from llama_pe.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from llama_pe.errors import ConfigError
from llama_pe.generate import stream_tokens

log = logging.getLogger(__name__)

CHECKPOINT = "models/best.pt"  # the train stage's output (dvc.yaml)


def experiment_checkpoint(name: str, repo: str | Path = ".") -> dict:
    """The best checkpoint of DVC experiment `name` (or of any git revision), read from DVC's cache at its commit."""
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.scm import RevError, resolve_rev

    try:
        with Repo(str(repo)) as dvc_repo:
            rev = resolve_rev(dvc_repo.scm, name)
    except (RevError, DvcException) as err:
        raise ConfigError(
            f"--exp: no experiment or git revision named {name!r} ({err}); `dvc exp list --all-commits` names them"
        ) from None
    try:
        with dvc.api.open(CHECKPOINT, repo=str(repo), rev=rev, mode="rb") as f:
            data = f.read()
    except (DvcException, FileNotFoundError) as err:
        raise ConfigError(
            f"--exp {name}: its {CHECKPOINT} is in neither the workspace's DVC cache nor a remote ({err}); "
            f"run `dvc exp pull origin {name}` or `dvc pull` first, or give the model the workspace holds with "
            f"--checkpoint {CHECKPOINT}"
        ) from None
    path = Path(f"{name}:{CHECKPOINT}")
    return load_checkpoint_bytes(data, path)


def load_checkpoint_bytes(data: bytes, path: Path) -> dict:
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for damaged bytes
        raise CheckpointError(path, f"is not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(checkpoint, dict) or "model_args" not in checkpoint or "tokenizer_model" not in checkpoint:
        raise CheckpointError(path, "is not a llama-pe checkpoint")
    return checkpoint


@contextlib.contextmanager
def quiet_end_of_stream() -> Iterator[None]:
    """A reader that stops early (`| head`) or Ctrl-C ends the stream without a traceback, as for other commands."""
    try:
        yield
    except BrokenPipeError:
        # Python's advice for a closed pipe: point stdout at devnull so that the interpreter's own flush at exit
        # does not fail again (docs.python.org/3/library/signal.html#note-on-sigpipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        sys.exit(130)  # 128 + SIGINT


def read_prompt(prompt: str, stdin: TextIO) -> str:
    return stdin.read() if prompt == "-" else prompt


def generate_text(
    checkpoint: str | None, exp: str | None, prompt: str, tokens: int, temperature: float, top_k: int | None,
    seed: int, out: TextIO = sys.stdout, stdin: TextIO = sys.stdin,
) -> str:  # fmt: skip
    """Write the prompt, then each new piece of text as soon as its token is sampled; returns the continuation."""
    if checkpoint and exp:
        raise ConfigError("--checkpoint and --exp name two models; give one")
    if tokens < 1:
        raise ConfigError(f"--tokens: expected a positive number of tokens, got {tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"--temperature: expected 0 (greedy) or a finite number above, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top-k: expected a positive integer, or 0 for no limit; got {top_k}")
    if checkpoint and not Path(checkpoint).is_file():
        raise ConfigError(f"--checkpoint: no file at {checkpoint}; give the path of a checkpoint the train stage wrote")
    text = read_prompt(prompt, stdin)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        # Bytes that are not UTF-8 reach Python as lone surrogates, U+DC80..U+DCFF for bytes 0x80..0xff.
        char = ord(err.object[err.start])
        found = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"U+{char:04X}"
        raise ConfigError(
            f"--prompt: not UTF-8 text ({found} at character {err.start}); give the prompt in UTF-8"
        ) from None
    saved = experiment_checkpoint(exp) if exp else _load_checkpoint(checkpoint)
    sp = spm.SentencePieceProcessor(model_proto=saved["tokenizer_model"])
    prompt_ids = sp.encode(text)
    if not prompt_ids:
        raise ConfigError(f"--prompt: {text!r} tokenizes to no token; give some text to continue")
    model = model_from_checkpoint(saved, exp or checkpoint or CHECKPOINT)
    out.write(text)
    out.flush()
    return _stream_text(sp, prompt_ids, stream_tokens(model, prompt_ids, tokens, temperature, top_k, seed), out)


def _load_checkpoint(checkpoint: str | None) -> dict:
    """The checkpoint at --checkpoint, or the train stage's. CheckpointError's advice (retrain, or `dvc checkout`)
    fits only the train stage's own output; another file gets advice about the flag."""
    path = checkpoint or CHECKPOINT
    try:
        return load_checkpoint(path)
    except CheckpointError as err:
        if Path(path).resolve() == Path(CHECKPOINT).resolve():
            raise
        raise ConfigError(f"--checkpoint: {path} {err.reason}; give a checkpoint the train stage wrote") from None


def _stream_text(sp: spm.SentencePieceProcessor, prompt_ids: list[int], new_tokens, out: TextIO) -> str:
    """Decode prompt + new tokens after each token and write what was added since the last write.

    Decoding the new tokens alone would lose the space that a "▁word" piece starts with, and a character that
    byte-fallback spells in several tokens is written once all of its bytes are there (until then it decodes as
    U+FFFD).
    """
    prefix = sp.decode(prompt_ids)
    ids, written = list(prompt_ids), ""
    for token in new_tokens:
        ids.append(token)
        continuation = sp.decode(ids)[len(prefix) :]
        if continuation.endswith("\ufffd") or not continuation.startswith(written):
            continue  # an incomplete character, or a re-segmentation: wait for the next token
        out.write(continuation[len(written) :])
        out.flush()
        written = continuation
    final = sp.decode(ids)[len(prefix) :]
    if final.startswith(written) and final != written:  # what was held back at the end
        out.write(final[len(written) :])
        written = final
    out.write("\n")
    out.flush()
    return written
