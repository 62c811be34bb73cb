"""The exported chat template renders exactly the training prompt (text and ids)."""

import pytest
from jinja2.exceptions import TemplateError

from agrl.task.data import encode_prompts
from agrl.task.format import render_prompt
from agrl.task.serving import chat_template
from agrl.task.tokenizer import build_tokenizer
from tests.hf_models import make_bpe_tokenizer

CASES = [("red  kettle", "kettle red\nsteel"), ("phone", "phone case black")]
TEXTS = [render_prompt(q, i, o) for q, i in CASES for o in ("label_first", "think_first")]


@pytest.fixture(scope="module", params=["word", "bpe", "bpe+bos"])
def tok(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    if request.param == "word":
        return build_tokenizer(TEXTS, d)
    return make_bpe_tokenizer(d, TEXTS, bos=request.param == "bpe+bos")


@pytest.mark.parametrize("order", ["label_first", "think_first"])
def test_chat_template_renders_the_training_prompt(tok, order):
    tok.chat_template = chat_template(order)
    for q, i in CASES:
        rec = {"query": q, "item": i}
        want_text = (tok.bos_token or "") + render_prompt(q, i, order)
        want_ids = encode_prompts(tok, [rec], order)[0]
        for msg in ({"role": "user", "query": q, "item": i},
                    {"role": "user", "content": f"query: {q}   item: {i}"}):  # fmt: skip
            text = tok.apply_chat_template([msg], add_generation_prompt=True, tokenize=False)
            assert text == want_text
            ids = tok.apply_chat_template([msg], add_generation_prompt=True, return_dict=True)
            assert list(ids["input_ids"]) == want_ids
            # HF's default add_generation_prompt=False renders the same prompt
            assert tok.apply_chat_template([msg], tokenize=False) == want_text


@pytest.mark.parametrize(
    "messages",
    [[{"role": "user", "content": "red kettle"}],
     [{"role": "system", "content": "x"}, {"role": "user", "query": "a", "item": "b"}],
     [{"role": "user", "query": "a", "item": "b"}, {"role": "assistant", "content": "4"}]],
)  # fmt: skip
def test_chat_template_refuses_other_messages(tok, messages):
    tok.chat_template = chat_template()
    with pytest.raises(TemplateError, match="agrl judge"):
        tok.apply_chat_template(messages, tokenize=False)
