"""What an exported model directory says about the prompt it must be served with.

Two things are written next to the weights (docs/serving.md):
  * a chat template (Jinja, in the tokenizer files) that renders exactly the training
    prompt, so `tok.apply_chat_template(messages, add_generation_prompt=True)` and vLLM's
    chat endpoint give the ids `agrl.task.data.encode_prompts` gave in training;
  * `agrl_prompt.json`, a card naming the format, the order, the label token ids and the
    chat message forms.

A request is ONE user message, in either form:
    {"role": "user", "query": Q, "item": I}              (transformers: extra keys pass)
    {"role": "user", "content": "query: Q item: I"}       (any OpenAI-style client)
The template collapses whitespace runs to one space (as `render_prompt` does), prepends
the tokenizer's bos token when it has one, and always ends with the response opener
(`<label>` in label-first order), whatever add_generation_prompt says: the judge has no
other turn, and a prompt without the opener is one the model never saw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agrl.task.format import (
    ITEM_TAG,
    LABEL_CLOSE,
    LABEL_OPEN,
    QUERY_TAG,
    THINK_CLOSE,
    THINK_OPEN,
    Order,
    render_prompt,
)

PROMPT_CARD = "agrl_prompt.json"
PROMPT_FORMAT = "agrl-judge-v1"


def chat_template(order: Order = "label_first") -> str:
    """The Jinja chat template that renders `render_prompt(query, item, order)` (+ bos)."""
    render_prompt("q", "i", order)  # checks the order
    opener = LABEL_OPEN if order == "label_first" else THINK_OPEN
    q, i = json.dumps(QUERY_TAG), json.dumps(ITEM_TAG)
    usage = (
        "the user message needs query and item fields, or content "
        f"{QUERY_TAG} <query> {ITEM_TAG} <item>"
    )
    return (
        "{%- if messages | length != 1 or messages[0]['role'] != 'user' -%}"
        "{{ raise_exception('agrl judge: send exactly one user message') }}"
        "{%- endif -%}"
        "{%- set m = messages[0] -%}"
        "{%- if m['query'] is defined and m['item'] is defined -%}"
        f"{{%- set text = {q} ~ ' ' ~ (m['query'] | string).split() | join(' ') ~ ' ' ~ {i}"
        " ~ ' ' ~ (m['item'] | string).split() | join(' ') -%}"
        "{%- else -%}"
        "{%- set words = (m['content'] | string).split() -%}"
        f"{{%- if words | length == 0 or words[0] != {q} or {i} not in words -%}}"
        f"{{{{ raise_exception('agrl judge: {usage}') }}}}"
        "{%- endif -%}"
        "{%- set text = words | join(' ') -%}"
        "{%- endif -%}"
        "{%- if bos_token -%}{{ bos_token }}{%- endif -%}"
        f"{{{{ text ~ ' {opener}' }}}}"
    )


RULE_BOOK_FILE = "rule_book.toml"  # a user's rule book, copied into an exported model


def _card(model_dir: str | Path) -> dict[str, Any]:
    """agrl_prompt.json of a model directory ({} when absent or unreadable)."""
    card = Path(model_dir) / PROMPT_CARD
    try:
        data = json.loads(card.read_text()) if card.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def model_order(model_dir: str | Path, override: str | None = None) -> str:
    """The response order of an exported model: `override`, else its card's, else
    label_first."""
    return override or str(_card(model_dir).get("order", "label_first"))


def model_rule_book(model_dir: str | Path, override: str | None = None) -> str:
    """The task.rule_book to evaluate an exported model with: `override` when given, else
    the one its agrl_prompt.json names (a copied TOML resolved inside the directory), else
    "world" (a model directory agrl did not write)."""
    if override:
        return override
    name = str(_card(model_dir).get("rule_book", "world"))
    return str(Path(model_dir) / name) if name == RULE_BOOK_FILE else str(name)


def prompt_card(
    tok: Any, order: Order, label_ids: list[list[int]], rule_book: str = "world"
) -> dict[str, Any]:
    """The contents of agrl_prompt.json for a tokenizer; label_ids [4][K] every single-token
    spelling of each label (`label_token_variants`, -1 padding dropped); rule_book the
    task.rule_book the model was trained under ("world", "label_only" or RULE_BOOK_FILE,
    a copy of the user's TOML next to the card)."""
    bos = tok.bos_token if getattr(tok, "bos_token_id", None) is not None else None
    if rule_book == "label_only":
        response = f"<L> {LABEL_CLOSE}"
        scoring = (
            "the first response token is the label: P(l) = sum of the probabilities of "
            "label_token_ids[l] over the sum for all four labels"
        )
    elif order == "label_first":
        response = f"<L> {LABEL_CLOSE} {THINK_OPEN} <rationale> {THINK_CLOSE}"
        scoring = (
            "the first response token is the label: P(l) = sum of the probabilities of "
            "label_token_ids[l] over the sum for all four labels"
        )
    else:
        response = f"<rationale> {THINK_CLOSE} {LABEL_OPEN} <L> {LABEL_CLOSE}"
        scoring = "generate, then read the label after <label> in the response"
    return {
        "format": PROMPT_FORMAT,
        "order": order,
        "rule_book": rule_book,
        "prompt": render_prompt("{query}", "{item}", order),
        "whitespace": "every whitespace run in query and item becomes one space",
        "bos": bos,
        "response": response + " <eos>",
        "eos_token_id": getattr(tok, "eos_token_id", None),
        "labels": [1, 2, 3, 4],
        "label_token_ids": {
            str(k + 1): [i for i in row if i >= 0] for k, row in enumerate(label_ids)
        },  # fmt: skip
        "scoring": scoring,
        "chat_messages": [
            {"role": "user", "query": "{query}", "item": "{item}"},
            {
                "role": "user",
                "content": render_prompt("{query}", "{item}", order).rsplit(" ", 1)[0],
            },
        ],
        "chat_template": "apply_chat_template(messages, add_generation_prompt=True) renders "
        "bos + prompt; the opener is appended even without add_generation_prompt",
        "docs": "docs/serving.md of agrl",
    }
