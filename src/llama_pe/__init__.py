"""llama-pe: position encodings compared in small LLaMA-style models on tiny Shakespeare."""

__version__ = "0.1.0"
