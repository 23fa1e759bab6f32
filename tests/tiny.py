"""A tiny random llama, built in-test, for the block maths (no files, no hub)."""

import torch


def tiny_llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    return model


def randomize_blocks(neeko, seed: int = 1):
    """Give every block non-zero A and B so each role really changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in neeko.modules.values():
            mod.lora_A.copy_(torch.randn(mod.lora_A.shape, generator=g) * 0.3)
            mod.lora_B.copy_(torch.randn(mod.lora_B.shape, generator=g) * 0.3)
