"""Tiny random Hugging Face Llama / Qwen2 / Qwen3 models saved to a directory (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    initializer_range=0.2,  # peaked logits: greedy ties are unlikely
)


def make_hf_model(arch: str, out_dir: Path, *, tie: bool = True, seed: int = 0, **overrides):
    """Build a random f32 model of `arch` (llama, qwen2, qwen3), save it to out_dir, return it.

    Biases and norm weights are randomised too (HF initialises them to 0 / 1), so a wrong
    mapping of either shows up in the logits.
    """
    torch.manual_seed(seed)
    kw = TINY | dict(tie_word_embeddings=tie, rope_theta=5000.0) | overrides
    cfg = AutoConfig.for_model(arch, **kw)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.2)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(out_dir)
    return model


def make_bpe_tokenizer(out_dir: Path, texts: list[str], *, bos: bool = False):
    """A Qwen/Llama-style byte-level BPE tokenizer trained on texts (+ each label digit with
    and without a leading space, so that both "4" and "Ġ4" are tokens), saved and reloaded.

    bos=True gives it a bos token that, like Llama's, the tokenizer itself prepends."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_end|>"] + (["<|begin_of_text|>"] if bos else [])
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    digits = ["score 1 2 3 4 then 4 3 2 1"] * 20
    core.train_from_iterator(list(texts) + digits, trainer)
    kw = dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if bos:
        bos_id = core.token_to_id("<|begin_of_text|>")
        core.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos_id)]
        )
        kw["bos_token"] = "<|begin_of_text|>"
    PreTrainedTokenizerFast(tokenizer_object=core, **kw).save_pretrained(str(out_dir))
    return AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
