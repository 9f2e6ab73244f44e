"""Hugging Face's LlamaForCausalLM as the reference implementation, behind the native model's interface."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from llama_pe.core.model.args import ModelArgs
from llama_pe.core.model.rope_scaling import ROPE_SCALING_METHODS, RopeScaling
from llama_pe.core.model.transformer import Transformer

# Native parameter names -> Hugging Face's, per layer and for the rest of the model.
_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def llama_config(args: ModelArgs) -> LlamaConfig:
    """A LlamaConfig with the same architecture as ModelArgs (which admits impl=hf with rope only); no hub."""
    return LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        head_dim=args.head_dim,
        max_position_embeddings=args.max_seq_len,
        rms_norm_eps=args.norm_eps,
        rope_parameters=hf_rope_parameters(args.encoding["rope_theta"], args.head_dim, None),
        tie_word_embeddings=args.tie_embeddings,
        attention_dropout=args.dropout,
        initializer_range=args.init_std,
        bos_token_id=1,
        eos_token_id=2,
    )


def hf_rope_parameters(theta: float, head_dim: int, scaling: RopeScaling | None) -> dict:
    """LlamaConfig.rope_parameters for the native model's rotary frequencies, scaled as `scaling` says."""
    if scaling is None:
        return {"rope_type": "default", "rope_theta": theta}
    return ROPE_SCALING_METHODS[scaling.method].hf_parameters(theta, head_dim, scaling)


def native_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a native state dict to LlamaForCausalLM's; both use the rotate-half RoPE layout, so no permutation."""
    return {_hf_name(name): tensor for name, tensor in state.items() if not name.startswith("positions.")}


def hf_to_native(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inverse = {hf: native for native, hf in _TOP_NAMES.items()}
    layer_inverse = {hf: native for native, hf in _LAYER_NAMES.items()}
    renamed = {}
    for name, tensor in state.items():
        if name.startswith("model.layers."):
            index, rest = name.removeprefix("model.layers.").split(".", 1)
            renamed[f"layers.{index}.{layer_inverse[rest]}"] = tensor
        elif name in inverse:
            renamed[inverse[name]] = tensor
    return renamed


def _hf_name(name: str) -> str:
    if name.startswith("layers."):
        index, rest = name.removeprefix("layers.").split(".", 1)
        return f"model.layers.{index}.{_LAYER_NAMES[rest]}"
    return _TOP_NAMES[name]


class HFLlama(nn.Module):
    """LlamaForCausalLM with the native model's forward: (logits, None), or (None, loss) given targets.

    Hugging Face's Llama has attention dropout only; the native model also drops out on the embeddings and the
    residual branches, so with model.dropout > 0 the two regularise differently.
    """

    max_positions = None  # rotary positions extrapolate

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        config = llama_config(args)
        # The native init first (depth-scaled residual projections, same random draws for the same seed), so
        # that hf and native differ in code only.
        native_init = native_to_hf(Transformer(args).state_dict())
        config._attn_implementation = "sdpa"
        self.hf = LlamaForCausalLM(config)
        self.hf.load_state_dict(native_init)

    @property
    def output(self) -> nn.Linear:
        """The output head, under the native model's name."""
        return self.hf.lm_head

    @contextlib.contextmanager
    def scaled_rope(self, scaling: RopeScaling) -> Iterator[None]:
        """Hugging Face's own implementation of the scaling method, inside the block (HF reads `factor` against
        max_position_embeddings, which is train.context here, as the native model does)."""
        config = copy.deepcopy(self.hf.config)
        config.rope_parameters = hf_rope_parameters(self.args.encoding["rope_theta"], self.args.head_dim, scaling)
        original = self.hf.model.rotary_emb
        self.hf.model.rotary_emb = LlamaRotaryEmbedding(config).to(self.output.weight.device)
        try:
            yield
        finally:
            self.hf.model.rotary_emb = original

    @torch.no_grad()
    def attention_maps(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's exact attention probabilities, (B, n_heads, T, T) per layer, from HF's eager attention."""
        implementation = self.hf.config._attn_implementation
        self.hf.set_attn_implementation("eager")  # SDPA gives no probabilities
        try:
            return [maps.float() for maps in self.hf(input_ids=tokens, output_attentions=True).attentions]
        finally:
            self.hf.set_attn_implementation(implementation)

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.hf.config)

    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        last: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        start = cache.get_seq_length() if cache is not None else 0
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)[None]  # (1, T)
        out = self.hf(
            input_ids=tokens, position_ids=positions, cache=cache, use_cache=cache is not None, logits_to_keep=last or 0
        )  # 0: every position
        logits = out.logits  # (B, T, vocab)
        if targets is None:
            return logits, None
        return None, F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
