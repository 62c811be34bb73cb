"""Word-level tokenizer of the relevance world, and label/eos ids for any HF tokenizer.

`build_tokenizer` makes a `tokenizers` WordLevel model over whitespace-split words (every
world text is single-space-separated, markers included, so decode(encode(x)) == x) and
saves it as a standard Hugging Face tokenizer directory that
`transformers.AutoTokenizer.from_pretrained(dir)` loads offline. `label_token_ids` and
`eos_ids` work the same for a Qwen/Llama tokenizer directory; `label_token_variants` lists
every single-token spelling of each label ("4", " 4", ...) so that the label posterior
counts all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, UNK)  # ids 0..3
LABEL_WORDS: tuple[str, ...] = ("1", "2", "3", "4")
# Files of which a Hugging Face tokenizer directory holds at least one.
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
)
# End-of-turn tokens of common chat tokenizers, also treated as end of sequence.
_EXTRA_EOS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")


def build_tokenizer(texts_or_vocab: Iterable[str], out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Build and save a word-level tokenizer over the whitespace-split words of the texts.

    Ids: specials 0..3 (pad, bos, eos, unk), labels "1".."4" at 4..7, then the other
    words in sorted order, so the same texts always give the same ids.
    """
    words = {w for text in texts_or_vocab for w in str(text).split()}
    words -= set(SPECIALS) | set(LABEL_WORDS)
    vocab_list = [*SPECIALS, *LABEL_WORDS, *sorted(words)]
    vocab = {w: i for i, w in enumerate(vocab_list)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return load_tokenizer(out)


# A directory holds a tokenizer when it has one of these (the vocabulary of a fast, a
# SentencePiece, a BPE or a WordPiece tokenizer); tokenizer_config.json alone is not one.
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


class TokenizerError(ValueError):
    """A tokenizer directory that is missing or holds no tokenizer; names the path."""


def has_tokenizer_files(path: str | Path) -> bool:
    """Whether the directory `path` holds a tokenizer (one of TOKENIZER_FILES)."""
    p = Path(path)
    return p.is_dir() and any((p / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load any local Hugging Face tokenizer directory, offline; a missing directory or one
    without tokenizer files is a TokenizerError naming it."""
    p = Path(path)
    if not p.exists():
        raise TokenizerError(f"{p}: tokenizer directory not found")
    if p.is_dir() and not has_tokenizer_files(p):
        raise TokenizerError(
            f"{p}: no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); save the "
            "tokenizer next to the model or name one with paths.tokenizer=DIR"
        )
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def label_token_ids(tok: PreTrainedTokenizerBase) -> np.ndarray:
    """Ids [4] int32 of labels 1..4 as the first response token.

    The label is the first word of a label-first response, so it is encoded at the start
    of a text; a tokenizer where "1" is not one token there (but is in the vocabulary, as
    in SentencePiece with a prefix space) falls back to the bare vocabulary entry.
    """
    ids = []
    for word in LABEL_WORDS:
        enc = tok.encode(word, add_special_tokens=False)
        if len(enc) != 1 or enc[0] == tok.unk_token_id:
            single = tok.convert_tokens_to_ids(word)
            if single is None or single == tok.unk_token_id:
                raise TokenizerError(
                    f"label {word!r} is not a single token for this tokenizer (got {enc})"
                )
            enc = [single]
        ids.append(enc[0])
    if len(set(ids)) != 4:
        raise TokenizerError(f"label token ids are not distinct: {ids}")
    return np.asarray(ids, dtype=np.int32)


def label_token_variants(tok: PreTrainedTokenizerBase) -> np.ndarray:
    """Ids [4, K] int32 of every single token that spells label l+1, padded with -1.

    Column 0 is `label_token_ids` (the id training puts first in a response); the other
    columns are the vocabulary's other spellings of the digit with leading whitespace
    ("Ġ4" in byte-level BPE, "▁4" in SentencePiece), which a model may also put after the
    prompt. The label posterior sums over a row, so no label probability is left out.
    """
    primary = label_token_ids(tok)
    special = set(tok.all_special_ids)
    rows: list[list[int]] = [[int(i)] for i in primary]
    short = [
        (t, i)
        for t, i in tok.get_vocab().items()
        if len(t) <= 8 and any(w in t for w in LABEL_WORDS)
    ]
    for t, i in sorted(short, key=lambda x: x[1]):
        if i in special:
            continue
        text = tok.convert_tokens_to_string([t])
        if text.lstrip() in LABEL_WORDS and i not in rows[int(text.lstrip()) - 1]:
            rows[int(text.lstrip()) - 1].append(int(i))
    k = max(len(r) for r in rows)
    return np.asarray([r + [-1] * (k - len(r)) for r in rows], dtype=np.int32)


def eos_ids(tok: PreTrainedTokenizerBase) -> list[int]:
    """Ids that end a response: eos plus the chat end-of-turn tokens the vocabulary has."""
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    vocab = tok.get_vocab()
    ids += [vocab[t] for t in _EXTRA_EOS if t in vocab]
    if not ids:
        raise TokenizerError("tokenizer has no eos token")
    return list(dict.fromkeys(int(i) for i in ids))
