"""Noisy text of the relevance world (SPEC 3; docs/world.md): a structured query or item
rendered with synonyms, aliases, templates, shuffled attributes and filler words.
agrl/world/reader.py reads these texts back."""

from __future__ import annotations

import numpy as np

from agrl.world import catalog as C
from agrl.world.config import WorldConfig
from agrl.world.generate import Item, Query


def _surface(rng: np.random.Generator, word: str, synonyms: tuple[str, ...], p: float) -> str:
    if synonyms and rng.random() < p:
        return str(rng.choice(synonyms))
    return word


def _cat_word(rng, cat: str, cfg: WorldConfig) -> str:
    return _surface(rng, cat, C.CATEGORY[cat].synonyms, cfg.p_synonym)


def _brand_word(rng, brand: str, cfg: WorldConfig) -> str:
    return _surface(rng, brand, C.BRAND[brand].aliases, cfg.p_alias)


def _color_word(rng, color: str) -> str:
    return _surface(rng, color, C.COLOR_SYNONYMS.get(color, ()), 0.3)


def _audience_word(rng, audience: str) -> str:
    return _surface(rng, audience, C.AUDIENCE_SYNONYMS[audience], 0.3)


def query_text(rng: np.random.Generator, q: Query, cfg: WorldConfig) -> str:
    """Noisy query text (synonyms, aliases, templates)."""
    cat = _cat_word(rng, q.cat, cfg)
    if q.qtype == "alternative":
        template = str(rng.choice(C.ALTERNATIVE_TEMPLATES))
        return template.format(brand=_brand_word(rng, q.alt_brand, cfg), cat=cat)
    if q.qtype == "qa":
        # The secondary attribute (label 3 always has one) is part of the question.
        attrs = [_color_word(rng, v) if k == "color" else v for k, v in q.attrs]
        template = str(rng.choice(C.QA_TEMPLATES))
        return template.format(feature=q.need, cat=" ".join([*attrs, cat]))
    words = []
    if q.brand:
        words.append(_brand_word(rng, q.brand, cfg))
    if q.audience:
        words.append(_audience_word(rng, q.audience))
    for kind, value in q.attrs:
        words.append(_color_word(rng, value) if kind == "color" else value)
    if q.need:
        words.append(q.need)
    words.append(cat)
    if q.negated:
        words += list(C.NEGATION_WORDS[rng.integers(len(C.NEGATION_WORDS))]) + [q.negated]
    return " ".join(words)


def title_text(rng: np.random.Generator, it: Item, cfg: WorldConfig) -> str:
    """Noisy item title: brand alias, category synonym, shuffled attributes, fillers."""
    words = [_cat_word(rng, it.cat, cfg)]
    if it.color:
        words.append(_color_word(rng, it.color))
    if it.size:
        words.append(it.size)
    if it.audience:
        words.append(_audience_word(rng, it.audience))
    if it.material:
        words.append(it.material)
    words += list(it.features)
    n_fill = int(rng.integers(cfg.max_fillers + 1))
    words += [str(w) for w in rng.choice(C.TITLE_FILLERS, size=n_fill, replace=False)]
    order = rng.permutation(len(words))
    words = [words[i] for i in order]
    brand = _brand_word(rng, it.brand, cfg)
    pos = 0 if rng.random() < 0.6 else int(rng.integers(len(words) + 1))
    words.insert(pos, brand)
    return " ".join(words)


__all__ = ["query_text", "title_text"]
