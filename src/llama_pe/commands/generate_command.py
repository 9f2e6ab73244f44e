"""`llama-pe generate`: continue a prompt with a trained model, the text streamed to stdout as it is sampled."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import sentencepiece as spm

from llama_pe.core.checkpoint import load_checkpoint, load_checkpoint_bytes, model_from_checkpoint
from llama_pe.core.generate import stream_tokens
from llama_pe.errors import ConfigError
from llama_pe.settings.yaml12 import YAMLError, load_yaml

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
            head = dvc_repo.scm.get_rev()
            has_remote = bool(dvc_repo.config["core"].get("remote"))
    except (RevError, DvcException) as err:
        raise ConfigError(
            f"--exp: no experiment or git revision named {name!r} ({err}); `dvc exp list --all-commits` names them"
        ) from None
    try:
        with dvc.api.open(CHECKPOINT, repo=str(repo), rev=rev, mode="rb") as f:
            data = f.read()
    except (DvcException, FileNotFoundError):
        raise ConfigError(_not_in_cache(name, rev, head, has_remote, Path(repo))) from None
    advice = "that copy in DVC's cache is damaged; give another --exp, or a file with --checkpoint"
    return load_checkpoint_bytes(data, f"{name}:{CHECKPOINT}", advice)


def _not_in_cache(name: str, rev: str, head: str, has_remote: bool, repo: Path) -> str:
    """Why revision `rev` has no model here, and what brings one: true for a fresh clone, a commit, an experiment."""
    md5 = _recorded_md5(repo, rev)
    if md5 is None:
        return (
            f"--exp {name}: commit {rev[:7]} records no {CHECKPOINT} in its dvc.lock (it trained no model); give an "
            f"experiment or commit that did (`dvc exp list --all-commits` names them)"
        )
    missing = f"--exp {name}: its {CHECKPOINT} (md5 {md5[:8]}, a DVC output at {rev[:7]}) is not in this repository's "
    missing += "DVC cache"
    if rev == head:
        pull = f"`dvc pull {CHECKPOINT}` fetches it from the DVC remote, or " if has_remote else ""
        return (
            f"{missing} (a fresh clone's cache is empty); {pull}`dvc repro` trains it into {CHECKPOINT}, then give "
            f"--checkpoint {CHECKPOINT}"
        )
    if has_remote:
        return f"{missing}; `dvc exp pull origin {name}` fetches an experiment and its model that were pushed to origin"
    return (
        f"{missing}, and no DVC remote is configured: only the repository that ran it holds its model "
        f"(docs/scale-out.md, remotes: `dvc exp push` there, `dvc exp pull` here)"
    )


def _recorded_md5(repo: Path, rev: str) -> str | None:
    """The md5 that dvc.lock at `rev` records for the train stage's checkpoint, or None."""
    shown = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:dvc.lock"], capture_output=True, text=True)
    if shown.returncode != 0:
        return None
    try:
        lock = load_yaml(shown.stdout)
        outs = [out for stage in lock["stages"].values() for out in stage.get("outs", [])]
    except (YAMLError, AttributeError, KeyError, TypeError):
        return None
    return next((out.get("md5") for out in outs if out.get("path") == CHECKPOINT), None)


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
    checkpoint: str | None,
    exp: str | None,
    prompt: str,
    tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    out: TextIO = sys.stdout,
    stdin: TextIO = sys.stdin,
) -> str:
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
    saved = experiment_checkpoint(exp) if exp else load_checkpoint(checkpoint or CHECKPOINT)
    sp = spm.SentencePieceProcessor(model_proto=saved["tokenizer_model"])
    prompt_ids = sp.encode(text)
    if not prompt_ids:
        raise ConfigError(f"--prompt: {text!r} tokenizes to no token; give some text to continue")
    model = model_from_checkpoint(saved, f"{exp}:{CHECKPOINT}" if exp else checkpoint or CHECKPOINT)
    out.write(text)
    out.flush()
    return _stream_text(sp, prompt_ids, stream_tokens(model, prompt_ids, tokens, temperature, top_k, seed), out)


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
