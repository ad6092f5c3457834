"""Build a tiny random Llama model and byte-level BPE tokenizer on disk, in about a second."""

from __future__ import annotations

from pathlib import Path

from shared.settings import ModelSpec

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Artificial Intelligence is a field of computer science.",
    "What is the capital of France? The capital of France is Paris.",
    "Once upon a time there was a tiny model that generated text token by token.",
] * 20

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(target: Path, chat: bool = True, seed: int = 0) -> Path:
    """Write a 2-layer Llama (random weights, fixed seed) and its tokenizer to target."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target


def tiny_spec(source: Path) -> ModelSpec:
    """Return the tiny model's catalog entry; a large cap lets tests run long jobs to cancel."""
    return ModelSpec(
        name="tiny",
        source=str(source),
        context_length=8192,
        max_new_tokens_cap=8000,
        default_max_new_tokens=16,
    )
