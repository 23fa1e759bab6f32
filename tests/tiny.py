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


# A chat template of the usual shape (ChatML, as SmolLM2's): each message closed by the end-of-turn token.
TINY_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer():
    """A character tokenizer for tiny_llama (fewer than 96 ids): lowercase letters, digits, a little punctuation,
    space and newline one id each, anything else <unk>, and ChatML's two markers as whole tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz0123456789 \n.,!?'\":;-()"
    vocab = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<|im_start|>",
                                  eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = TINY_TEMPLATE
    return tok
