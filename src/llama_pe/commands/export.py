"""Export a rope checkpoint as a Hugging Face model folder that transformers loads offline."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import sentencepiece as spm
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import generate_merges

from llama_pe.core.checkpoint import load_checkpoint, model_from_checkpoint
from llama_pe.core.data.tokenizer import model_type
from llama_pe.core.model.hf import HFLlama, llama_config, native_to_hf
from llama_pe.errors import ConfigError
from llama_pe.io import atomic_path
from llama_pe.positions.catalogue import ENCODINGS, hf_encoding

log = logging.getLogger(__name__)


def _bpe(sp: spm.SentencePieceProcessor, pieces: list[str], merge: bool = True) -> Tokenizer:
    vocab = {piece: i for i, piece in enumerate(pieces)}
    special = [p for i, p in enumerate(pieces) if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)]
    # SentencePiece merges the pair whose result scores highest; listing merges by score reproduces that order.
    scores = {p: sp.get_score(i) for i, p in enumerate(pieces)}
    merges = generate_merges(vocab, scores, skip_tokens=special) if merge else []
    unk = pieces[sp.unk_id()]
    return Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))


def _unigram(sp: spm.SentencePieceProcessor, pieces: list[str]) -> Tokenizer:
    named = {i for i in range(len(pieces)) if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)}
    # SentencePiece's Viterbi never matches <s>, <unk> or <0x41> in text; tokenizers' does. A score far below any
    # real piece keeps it from choosing them where the text's characters have pieces of their own.
    vocab = [(piece, -1e9 if i in named else sp.get_score(i)) for i, piece in enumerate(pieces)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True))
    spans_lt = any("<" in piece and len(piece) > 1 for i, piece in enumerate(pieces) if i not in named)
    if any(sp.is_byte(i) for i in named) and not spans_lt:
        # Where a character of "<s>" has no piece, tokenizers would still take <s>, as an unknown character scores
        # below every piece. Each such name starts with "<"; cutting the text around every "<" changes nothing else
        # when no learnt piece spans one and unknown characters become bytes (no <unk> runs to fuse).
        tokenizer.pre_tokenizer = pre_tokenizers.Split("<", behavior="isolated")
    return tokenizer


# How to rebuild each SentencePiece model type in `tokenizers` so that it gives SentencePiece's ids. A char model
# is a BPE with no merges: every character with a piece is one id and any other falls back to bytes. The word
# model is not lossless (llama_pe.settings.config refuses it), so it has no entry.
HF_TOKENIZERS: dict[str, Callable[[spm.SentencePieceProcessor, list[str]], Tokenizer]] = {
    "bpe": _bpe,
    "unigram": _unigram,
    "char": partial(_bpe, merge=False),
}


def hf_tokenizer(tokenizer_model: bytes) -> PreTrainedTokenizerFast:
    """The project's SentencePiece model as a `tokenizers` tokenizer giving the same ids, byte fallback included."""
    kind = model_type(tokenizer_model)
    if kind not in HF_TOKENIZERS:
        raise ConfigError(
            f"tokenizer.model_type={kind} has no Hugging Face export that gives SentencePiece's ids; "
            f"exportable types: {', '.join(HF_TOKENIZERS)}"
        )
    sp = spm.SentencePieceProcessor(model_proto=tokenizer_model)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    tokenizer = HF_TOKENIZERS[kind](sp, pieces)
    # The project's tokenizer has no dummy prefix and no normalisation: spaces become ▁ and nothing else changes.
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    controls = [pieces[i] for i in (sp.unk_id(), sp.bos_id(), sp.eos_id()) if i >= 0]
    tokenizer.add_special_tokens([AddedToken(piece, special=True) for piece in controls])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=pieces[sp.unk_id()],
        bos_token=pieces[sp.bos_id()] if sp.bos_id() >= 0 else None,
        eos_token=pieces[sp.eos_id()] if sp.eos_id() >= 0 else None,
        # SentencePiece reads "<s>" in text as three characters, never as the control piece.
        split_special_tokens=True,
    )


def check_export_target(checkpoint_path: Path, out_dir: Path, force: bool) -> None:
    """Before any work: out_dir may be written (new, an empty folder, or --force) and never takes the input with it."""
    source, target = checkpoint_path.resolve(), out_dir.resolve()
    if target == source or target in source.parents:
        raise ConfigError(
            f"export-hf: the output {out_dir} holds the checkpoint {checkpoint_path} it would export, and writing "
            f"it would delete that checkpoint (even with --force); give another output folder"
        )
    if out_dir.exists() or out_dir.is_symlink():
        if out_dir.is_dir() and not out_dir.is_symlink() and not any(out_dir.iterdir()):
            return
        if not force:
            what = "a folder that is not empty" if out_dir.is_dir() else "a file"
            raise ConfigError(
                f"export-hf: {out_dir} exists and is {what}; give a new or empty folder, or add --force to replace "
                f"it (everything in it is deleted)"
            )
    parent = next(p for p in (target.parent, *target.parent.parents) if p.exists())
    if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise ConfigError(f"export-hf: cannot write {out_dir}: {parent} is not a folder this user can write in")


def export_hf(checkpoint_path: str | Path, out_dir: str | Path, force: bool = False) -> None:
    """Write config, safetensors weights and tokenizer files into out_dir, atomically."""
    checkpoint_path, out_dir = Path(checkpoint_path), Path(out_dir)
    check_export_target(checkpoint_path, out_dir, force)
    checkpoint = load_checkpoint(checkpoint_path)
    pos, impl = checkpoint["model_args"].get("pos"), checkpoint["model_args"].get("impl")
    if pos in ENCODINGS and not ENCODINGS[pos].hf_exportable:
        raise ConfigError(
            f"export-hf: model.pos={pos} ({ENCODINGS[pos].summary}) has no Hugging Face equivalent: "
            f"LlamaForCausalLM computes model.pos={hf_encoding()} only, so only its checkpoints can be exported"
        )
    model = model_from_checkpoint(checkpoint, checkpoint_path)
    if isinstance(model, HFLlama):
        hf_model = model.hf
    else:
        hf_model = LlamaForCausalLM(llama_config(model.args))
        hf_model.load_state_dict(native_to_hf(model.state_dict()))
    try:
        with atomic_path(out_dir, directory=True) as tmp:
            hf_model.save_pretrained(tmp)
            hf_tokenizer(checkpoint["tokenizer_model"]).save_pretrained(tmp)
            for path in tmp.iterdir():
                os.chmod(path, 0o644)  # safetensors writes its file 0600; the folder is meant to be shared and served
    except OSError as err:
        raise ConfigError(f"export-hf: cannot write {out_dir} ({err.strerror or err})") from None
    log.info("exported %s (model.impl=%s) to %s", checkpoint_path, impl, out_dir)
