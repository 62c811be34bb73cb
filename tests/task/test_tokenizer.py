"""Tokenizer: word-level round trip, offline AutoTokenizer load, label and eos ids."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from agrl.task.format import render_prompt
from agrl.task.tokenizer import (
    TokenizerError,
    build_tokenizer,
    eos_ids,
    label_token_ids,
    label_token_variants,
    load_tokenizer,
)
from agrl.world import WorldConfig, generate_world
from agrl.world.splits import world_vocabulary
from tests.hf_models import make_bpe_tokenizer


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig(seed=2, n_sft=300, n_rl=150, n_b_eval=60, n_w_eval=60))


@pytest.fixture(scope="module")
def tok(world, tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    build_tokenizer(world_vocabulary(), d)  # the catalog alone covers every world text
    return AutoTokenizer.from_pretrained(str(d), local_files_only=True)


def _texts(world):
    for recs in world.values():
        for r in recs:
            yield render_prompt(r["query"], r["item"])
            yield render_prompt(r["query"], r["item"], "think_first")
            yield r["gold_response"]
            if "response" in r:
                yield r["response"]


def test_round_trip_every_rendered_text(world, tok):
    n = 0
    for text in _texts(world):
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text
        n += 1
    assert n > 1000


def test_vocab_small_and_specials(tok):
    assert len(tok) < 2048
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert eos_ids(tok) == [2]


def test_label_ids_are_the_first_response_token(world, tok):
    ids = label_token_ids(tok)
    assert ids.shape == (4,) and ids.dtype == np.int32 and len(set(ids.tolist())) == 4
    for r in world["b_eval"]:
        first = tok.encode(r["gold_response"], add_special_tokens=False)[0]
        assert first == ids[r["label"] - 1]


def test_same_texts_same_ids(world, tmp_path):
    a = build_tokenizer(_texts(world), tmp_path / "a").get_vocab()
    b = build_tokenizer(reversed(list(_texts(world))), tmp_path / "b").get_vocab()
    assert a == b


def test_byte_level_bpe_tokenizer_works_through_same_interface(world, tmp_path):
    # A Qwen/Llama-style tokenizer: byte-level BPE (GPT-2 split, no prefix space), chat eos.
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)

    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(list(_texts(world))[:2000], trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")
    hf.save_pretrained(str(tmp_path))
    bpe = load_tokenizer(tmp_path)
    ids = label_token_ids(bpe)
    for r in world["b_eval"][:50]:
        enc = bpe.encode(r["gold_response"], add_special_tokens=False)
        assert enc[0] == ids[r["label"] - 1]
        assert bpe.decode(enc) == r["gold_response"]
    assert set(eos_ids(bpe)) == {
        bpe.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")
    }


def test_label_ids_error_when_labels_are_not_tokens(tmp_path):
    core = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    with pytest.raises(ValueError, match="single token"):
        label_token_ids(hf)
    with pytest.raises(ValueError, match="eos"):
        eos_ids(hf)


def test_label_variants_cover_every_spelling_in_a_bpe_vocabulary(world, tok, tmp_path):
    assert label_token_variants(tok).tolist() == [[i] for i in label_token_ids(tok)]  # word-level
    texts = [r["gold_response"] for r in world["b_eval"]]
    bpe = make_bpe_tokenizer(tmp_path, texts)
    var = label_token_variants(bpe)
    assert var.shape == (4, 2)
    for lab in range(4):
        # column 0 is what training puts first in a response; the other is " 4" ("Ġ4")
        assert var[lab, 0] == bpe.encode(f"{lab + 1} </label>", add_special_tokens=False)[0]
        assert bpe.convert_ids_to_tokens(int(var[lab, 1])) == f"Ġ{lab + 1}"
    for r in world["b_eval"][:20]:
        assert bpe.encode(r["gold_response"], add_special_tokens=False)[0] == var[r["label"] - 1, 0]


def test_model_directory_without_tokenizer_files_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TokenizerError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
