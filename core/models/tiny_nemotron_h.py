"""A tiny model of the NemotronH family (Nemotron 3 Nano's architecture), built from scratch.

Same block types and MoE router as the real 52-layer model, scaled down so that SFT and RL run on a laptop CPU:
Mamba-2 mixers ("linear_attention"), MoE feed-forwards ("moe") and grouped-query attention ("full_attention"),
each a pre-norm residual block. NemotronH attention has no positional embedding; the Mamba layers carry order.

MoE, as in Nemotron 3 Nano: squared-ReLU experts plus one always-on shared expert; the router scores experts with
a sigmoid in fp32, adds `e_score_correction_bias` for *choosing* the top-k only, and weights the chosen experts by
their unbiased scores normalised to sum 1, times `routed_scaling_factor` (2.5).

Where the router lives (what a routing-replay or router-freezing patch needs):
    model.model.layers[i].block_type == "moe"          (config.layers_block_type[i])
    model.model.layers[i].mixer                        NemotronHMoE: .gate, .experts, .shared_experts
    model.model.layers[i].mixer.gate                   NemotronHTopkRouter
        .weight                    Parameter (n_routed_experts, hidden_size), logits = x @ weight.T in fp32
        .e_score_correction_bias   buffer (n_routed_experts,), kept in fp32, selection only
        forward(h) -> (router_logits, topk_weights, topk_indices)

On CPU the Mamba-2 mixers run transformers' PyTorch reference scan (logged once as a "falling back" warning);
with `mamba_ssm`/`causal_conv1d` installed the fused kernels are picked automatically (`use_mamba_kernels` is
deprecated and ignored, so it is not set here). That torch path does not reset the recurrent state at
`position_ids` restarts: samples packed into one row leak into each other through the Mamba layers.
"""

from transformers import NemotronHConfig, NemotronHForCausalLM

# One letter per block, NemotronH's own notation: M = Mamba-2, E = MoE, * = attention (- = dense MLP, unused).
# Nemotron 3 Nano interleaves Mamba and MoE with an attention block every few layers; this is that, shortened.
# Two attention blocks, not one: answering arithmetic means copying numbers out of the prompt, which a single
# attention layer learned several times slower in our SFT runs (3% vs 31% held-out after the same budget).
TINY_PATTERN = "M*EM*E"


def tiny_nemotron_h_config(vocab_size: int, hidden_size: int = 128, **overrides) -> NemotronHConfig:
    """Config for a small NemotronH MoE (6 layers: 2 Mamba-2, 2 attention, 2 MoE): ~1.6M parameters at
    ``hidden_size`` 128 with a 1024-token vocabulary, ~4.5M at 256 with 2048 tokens.

    Token ids default to the layout of `cascade.tokenizer.train_chat_tokenizer` (pad `<|endoftext|>` = 0,
    eos `<|im_end|>` = 2, no bos); pass `pad_token_id=` / `eos_token_id=` to override for another tokenizer.
    Any other field of `NemotronHConfig` can be overridden too: `hybrid_override_pattern="M*-M*-"` (NemotronH's
    letters, as in `TINY_PATTERN`) or `layers_block_type=[...]` sets the blocks.
    """
    pattern = overrides.pop("hybrid_override_pattern", TINY_PATTERN)
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        layers_block_type=NemotronHConfig._pattern_to_list(pattern),
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=2,
        max_position_embeddings=4096,  # informational: attention is position-free (NoPE)
        # grouped-query attention: 4 query heads share 2 key/value heads
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        # Mamba-2: heads x 32 = 2 x hidden (expand 2), one B/C group, 32-dim state
        mamba_num_heads=2 * hidden_size // 32,
        mamba_head_dim=32,
        n_groups=1,
        ssm_state_size=32,
        conv_kernel=4,
        chunk_size=64,  # the torch scan materialises (chunk x chunk) per head; small chunks keep it cheap
        # MoE: 8 routed squared-ReLU experts, top-2, one shared expert; Nano's router settings
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        moe_intermediate_size=256,
        moe_shared_expert_intermediate_size=256,
        mlp_hidden_act="relu2",
        n_group=1,
        topk_group=1,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        intermediate_size=256,  # only used by dense "mlp" blocks, if an override adds any
        initializer_range=0.02,
        layer_norm_epsilon=1e-5,
    )
    fields.update(overrides)
    return NemotronHConfig(**fields)


def build_model(config: NemotronHConfig) -> NemotronHForCausalLM:
    """Randomly initialised NemotronHForCausalLM in fp32 (seed with torch.manual_seed before calling)."""
    return NemotronHForCausalLM(config)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["TINY_PATTERN", "tiny_nemotron_h_config", "build_model", "count_parameters"]
