"""Export a rope checkpoint as a Hugging Face model folder that transformers loads offline."""

from __future__ import annotations

import logging
from pathlib import Path

import sentencepiece as spm
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import generate_merges

from llama_pe.checkpoint import load_checkpoint, model_from_checkpoint
from llama_pe.errors import ConfigError
from llama_pe.io import atomic_path
from llama_pe.model.hf import HFLlama, llama_config, native_to_hf

log = logging.getLogger(__name__)


def hf_tokenizer(tokenizer_model: bytes) -> PreTrainedTokenizerFast:
    """The project's SentencePiece BPE as a `tokenizers` BPE giving the same ids, byte fallback included."""
    sp = spm.SentencePieceProcessor(model_proto=tokenizer_model)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    special = [p for i, p in enumerate(pieces) if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)]
    # SentencePiece merges the pair whose result scores highest; listing merges by score reproduces that order.
    merges = generate_merges(vocab, {p: sp.get_score(i) for i, p in enumerate(pieces)}, skip_tokens=special)
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=sp.id_to_piece(sp.unk_id()), fuse_unk=True, byte_fallback=True)
    )
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
    )


def export_hf(checkpoint_path: str | Path, out_dir: str | Path) -> None:
    """Write config, safetensors weights and tokenizer files into out_dir, atomically."""
    checkpoint = load_checkpoint(checkpoint_path)
    pos, impl = checkpoint["model_args"]["pos"], checkpoint["model_args"]["impl"]
    if pos != "rope":
        raise ConfigError(
            f"model.pos={pos} has no Hugging Face equivalent (LlamaForCausalLM has rotary positions only); "
            f"only rope checkpoints can be exported"
        )
    model = model_from_checkpoint(checkpoint)
    if isinstance(model, HFLlama):
        hf_model = model.hf
    else:
        hf_model = LlamaForCausalLM(llama_config(model.args))
        hf_model.load_state_dict(native_to_hf(model.state_dict()))
    with atomic_path(out_dir, directory=True) as tmp:
        hf_model.save_pretrained(tmp)
        hf_tokenizer(checkpoint["tokenizer_model"]).save_pretrained(tmp)
    log.info("exported %s (model.impl=%s) to %s", checkpoint_path, impl, out_dir)
