"""The LLaMA-style decoder, its position encodings and the Hugging Face reference behind one interface."""

from llama_pe.model.args import SIZES, ModelArgs, model_args_from_config
from llama_pe.model.build import build_model
from llama_pe.model.transformer import Transformer

__all__ = ["SIZES", "ModelArgs", "Transformer", "build_model", "model_args_from_config"]
