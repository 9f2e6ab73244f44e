"""The LLaMA-style decoder, its position encodings and the Hugging Face reference behind one interface."""

from llama_pe.core.model.args import SIZES, ModelArgs, model_args_from_config
from llama_pe.core.model.build import build_model
from llama_pe.core.model.transformer import Transformer

__all__ = ["SIZES", "ModelArgs", "Transformer", "build_model", "model_args_from_config"]
