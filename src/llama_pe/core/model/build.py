"""Build the model that model.impl names: the native decoder or Hugging Face's Llama."""

from __future__ import annotations

from torch import nn

from llama_pe.core.model.args import ModelArgs
from llama_pe.core.model.transformer import Transformer
from llama_pe.errors import ConfigError


def _build_hf(args: ModelArgs) -> nn.Module:
    from llama_pe.core.model.hf import HFLlama  # transformers is slow to import; only the reference needs it

    return HFLlama(args)


IMPLEMENTATIONS = {"native": Transformer, "hf": _build_hf}


def build_model(args: ModelArgs) -> nn.Module:
    if args.impl not in IMPLEMENTATIONS:
        raise ConfigError(f"model.impl: unknown implementation {args.impl!r}; valid: {', '.join(IMPLEMENTATIONS)}")
    return IMPLEMENTATIONS[args.impl](args)
