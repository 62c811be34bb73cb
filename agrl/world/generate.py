"""Query-item pairs of the relevance world and their gold judgement (SPEC 3).

A pair is built structurally (Query, Item), judged by `judge` into per-rule verdict codes
[R], labelled by the rule engine (agrl/task/rules.py), then rendered to noisy text.
`sample_pair` draws a pair of a given query type whose gold label is a given target:
it picks a scenario that can yield the label (an accessory, another brand, the negated
substance present, ...) and checks the result with the engine, so every label is exactly
what the engine says about the verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from agrl.task.data import QUERY_TYPES
from agrl.task.rules import ACCESSORY, DIM_INDEX, MATCH, MISMATCH, NA, PARTIAL, R, rule_label
from agrl.world import catalog as C
from agrl.world.config import WorldConfig

ATTR_KINDS: tuple[str, ...] = ("color", "size", "material")
Knowledge = Mapping[str, frozenset[str]]
GOLD_KNOWLEDGE: Knowledge = {s: frozenset(p) for s, p in C.KNOWLEDGE.items()}


@dataclass(frozen=True)
class Query:
    qtype: str
    cat: str
    brand: str | None = None  # asked brand
    alt_brand: str | None = None  # "alternative to <alt_brand>"
    audience: str | None = None
    attrs: tuple[tuple[str, str], ...] = ()  # (kind, value), kind in ATTR_KINDS
    negated: str | None = None  # "without <negated>" (a substance)
    need: str | None = None  # Q&A feature or knowledge property


@dataclass(frozen=True)
class Item:
    """What the title states; None = not stated (audience None = unisex)."""

    cat: str
    brand: str
    color: str | None = None
    size: str | None = None
    audience: str | None = None
    material: str | None = None  # a substance: material or ingredient
    features: tuple[str, ...] = ()


def judge(
    q: Query,
    it: Item,
    know: Knowledge = GOLD_KNOWLEDGE,
    unstated_is_match: frozenset[str] = frozenset(),
) -> np.ndarray:
    """Per-rule verdict codes [R] int32 of item `it` for query `q` (SPEC 2).

    `know` and `unstated_is_match` exist so that the teacher can judge with its own
    (partly wrong) knowledge; the gold judgement uses the defaults.
    """
    v = np.full((R,), NA, dtype=np.int32)
    if it.cat == q.cat:
        v[DIM_INDEX["category"]] = MATCH
    elif it.cat in C.ACCESSORIES.get(q.cat, ()):
        v[DIM_INDEX["category"]] = ACCESSORY
    else:
        v[DIM_INDEX["category"]] = MISMATCH
    if q.alt_brand is not None:
        if it.brand == q.alt_brand:
            code = PARTIAL
        elif C.BRAND[it.brand].tier == "luxury":
            code = MISMATCH
        else:
            code = MATCH
        v[DIM_INDEX["brand"]] = code
    elif q.brand is not None:
        v[DIM_INDEX["brand"]] = MATCH if it.brand == q.brand else MISMATCH
    if q.negated is not None:
        v[DIM_INDEX["negation"]] = MISMATCH if it.material == q.negated else MATCH
    if q.need is not None:
        has = q.need in it.features or q.need in know.get(it.material or "", frozenset())
        v[DIM_INDEX["need"]] = MATCH if has else MISMATCH
    if q.audience is not None:
        fits = it.audience == q.audience or (it.audience is None and q.audience != "kids")
        v[DIM_INDEX["audience"]] = MATCH if fits else MISMATCH
    if q.attrs:
        stated = {"color": it.color, "size": it.size, "material": it.material}
        codes = []
        for kind, value in q.attrs:
            if stated[kind] is None:
                codes.append(MATCH if kind in unstated_is_match else PARTIAL)
            else:
                codes.append(MATCH if stated[kind] == value else MISMATCH)
        code = MISMATCH if MISMATCH in codes else PARTIAL if PARTIAL in codes else MATCH
        v[DIM_INDEX["attributes"]] = code
    return v


# ----------------------------------------------------------------------------- summaries
def query_summary(q: Query) -> str:
    """Canonical reading of the query (the rationale's `query:` part)."""
    words = [q.cat]
    if q.brand:
        words.append(q.brand)
    if q.audience:
        words.append(q.audience)
    words += [value for _, value in q.attrs]
    if q.negated:
        words += ["not", q.negated]
    if q.alt_brand:
        words += ["alt-to", q.alt_brand]
    if q.need:
        words += ["need", q.need]
    return " ".join(words)


def item_summary(q: Query, it: Item, know: Knowledge = GOLD_KNOWLEDGE) -> str:
    """Canonical reading of the title, restricted to what the query asks about.

    Brand aliases are resolved; for a need, the deciding fact is spelled out
    ("nylon is waterproof" / "nylon not waterproof"): the knowledge a rationale carries.
    """
    words = [it.cat, it.brand]
    if q.alt_brand:
        words.append(C.BRAND[it.brand].tier)
    if q.audience:
        words.append(it.audience or C.UNISEX)
    stated = {"color": it.color, "size": it.size, "material": it.material}
    for kind, _ in q.attrs:
        words.append(stated[kind] or f"{kind}-unstated")
    if q.negated:
        words += ["has", it.material] if it.material == q.negated else ["no", q.negated]
    if q.need:
        if q.need in it.features:
            words += ["has", q.need]
        elif it.material:
            has = q.need in know.get(it.material, frozenset())
            words += [it.material, "is" if has else "not", q.need]
        else:
            words += ["lacks", q.need]
    return " ".join(words)


# ----------------------------------------------------------------------------- sampling
def _pick(rng: np.random.Generator, options):
    options = list(options)
    return options[int(rng.integers(len(options)))]


def _knowledge_needs(cat: C.Category) -> tuple[str, ...]:
    """Properties of `cat` that some but not all of its substances have."""
    props = dict.fromkeys(p for s in cat.substances for p in C.KNOWLEDGE[s])
    return tuple(p for p in props if any(p not in C.KNOWLEDGE[s] for s in cat.substances))


def _attr_values(cat: C.Category, kind: str) -> tuple[str, ...]:
    if kind == "color":
        return C.COLORS if cat.colors else ()
    if kind == "size":
        return C.SIZES if cat.sizes else ()
    return cat.substances if len(cat.substances) >= 2 else ()


def _eligible(cat: C.Category, qtype: str) -> bool:
    if qtype == "attribute":
        return any(_attr_values(cat, k) for k in ATTR_KINDS)
    if qtype == "negation":
        return len(cat.substances) >= 2
    if qtype == "knowledge":
        return bool(_knowledge_needs(cat))
    return True


def sample_query(rng: np.random.Generator, qtype: str, label: int) -> Query:
    """A structured query of type `qtype`; label 3 adds a secondary attribute if needed."""
    cats = [c for c in C.CATEGORIES if _eligible(c, qtype)]
    cat = _pick(rng, cats)
    dept = C.BRANDS_OF_DEPT[cat.dept]
    q = Query(qtype=qtype, cat=cat.name)
    p_brand = {"plain": 0.5, "attribute": 0.3, "negation": 0.2}.get(qtype, 0.0)
    if rng.random() < p_brand:
        q = replace(q, brand=_pick(rng, dept).name)
    p_aud = {"plain": 0.3, "attribute": 0.4, "knowledge": 0.2, "negation": 0.1}.get(qtype, 0.0)
    if cat.audience and rng.random() < p_aud:
        q = replace(q, audience=_pick(rng, C.AUDIENCES))
    kinds = [k for k in ATTR_KINDS if _attr_values(cat, k)]
    if qtype == "attribute":
        n = 1 + int(rng.random() < 0.35 and len(kinds) > 1)
        chosen = [kinds[i] for i in sorted(rng.choice(len(kinds), size=n, replace=False))]
        q = replace(q, attrs=tuple((k, _pick(rng, _attr_values(cat, k))) for k in chosen))
    elif qtype == "negation":
        q = replace(q, negated=_pick(rng, cat.substances))
    elif qtype == "alternative":
        q = replace(q, alt_brand=_pick(rng, [b for b in dept if b.tier == "luxury"]).name)
    elif qtype == "qa":
        q = replace(q, need=_pick(rng, cat.features))
    elif qtype == "knowledge":
        q = replace(q, need=_pick(rng, _knowledge_needs(cat)))
    if qtype in ("negation", "qa", "knowledge") and (label == 3 or rng.random() < 0.1):
        extra = [k for k in kinds if k != "material"]  # the substance is the type's own slot
        if extra:
            k = _pick(rng, extra)
            q = replace(q, attrs=((k, _pick(rng, _attr_values(cat, k))),))
    return q


def _random_item(rng: np.random.Generator, cat_name: str, q: Query, cfg: WorldConfig) -> Item:
    """An item of `cat_name` with random brand and randomly stated attributes."""
    cat = C.CATEGORY[cat_name]
    brand = _pick(rng, C.BRANDS_OF_DEPT[cat.dept]).name
    p = cfg.p_extra_attr
    return Item(
        cat=cat_name,
        brand=brand,
        color=_pick(rng, C.COLORS) if cat.colors and rng.random() < p else None,
        size=_pick(rng, C.SIZES) if cat.sizes and rng.random() < p else None,
        audience=_pick(rng, C.AUDIENCES) if cat.audience and rng.random() < p else None,
        material=_pick(rng, cat.substances) if q.qtype != "qa" and rng.random() < p else None,
        features=(_pick(rng, cat.features),) if q.qtype == "qa" else (),
    )


def _matching_item(rng: np.random.Generator, q: Query, cfg: WorldConfig) -> Item:
    """An item that satisfies every rule of `q` (gold label 4)."""
    cat = C.CATEGORY[q.cat]
    it = _random_item(rng, q.cat, q, cfg)
    dept = C.BRANDS_OF_DEPT[cat.dept]
    if q.brand:
        it = replace(it, brand=q.brand)
    elif q.alt_brand:
        it = replace(it, brand=_pick(rng, [b for b in dept if b.tier != "luxury"]).name)
    if q.audience:
        options = [q.audience] if q.audience == "kids" else [q.audience, None]
        it = replace(it, audience=_pick(rng, options))
    for kind, value in q.attrs:
        it = replace(it, **{kind: value})
    if q.negated and it.material == q.negated:
        it = replace(it, material=_pick(rng, [s for s in cat.substances if s != q.negated]))
    if q.need and q.qtype == "knowledge":
        it = replace(
            it, material=_pick(rng, [s for s in cat.substances if q.need in C.KNOWLEDGE[s]])
        )
    elif q.need:
        others = [f for f in cat.features if f != q.need]
        extra = (_pick(rng, others),) if others and rng.random() < 0.3 else ()
        it = replace(it, features=tuple(rng.permutation([q.need, *extra]).tolist()))
    return it


def _causes(q: Query, label: int) -> list[str]:
    """Scenarios that turn a matching item into one of gold label `label`."""
    if label == 1:
        return ["category"]
    if label == 2:
        causes = ["accessory"] if q.cat in C.ACCESSORIES else []
        causes += ["brand"] if q.brand else []
        causes += ["alt-luxury"] if q.alt_brand else []
        causes += ["negation"] if q.negated else []
        causes += ["need"] if q.need else []
        causes += ["audience"] if q.audience else []
        return causes
    if label == 3:
        return (["alt-original"] if q.alt_brand else []) + (
            ["attr-mismatch", "attr-unstated"] if q.attrs else []
        )
    return ["none"]


# The scenario a hard query type is about, preferred when it can yield the label.
_OWN_CAUSE = {
    "negation": "negation",
    "alternative": "alt-original",
    "qa": "need",
    "knowledge": "need",
    "attribute": "attr-unstated",
}


def _apply_cause(rng, q: Query, it: Item, cause: str, cfg: WorldConfig) -> Item:
    cat = C.CATEGORY[q.cat]
    dept = C.BRANDS_OF_DEPT[cat.dept]
    if cause == "category":
        banned = {q.cat, *C.ACCESSORIES.get(q.cat, ())}
        pool = [c.name for c in C.CATEGORIES if c.name not in banned]
        same = [c for c in pool if C.CATEGORY[c].dept == cat.dept]
        return _random_item(rng, _pick(rng, same if same and rng.random() < 0.5 else pool), q, cfg)
    if cause == "accessory":
        return _random_item(rng, _pick(rng, C.ACCESSORIES[q.cat]), q, cfg)
    if cause == "brand":
        return replace(it, brand=_pick(rng, [b.name for b in dept if b.name != q.brand]))
    if cause == "alt-luxury":
        lux = [b.name for b in dept if b.tier == "luxury" and b.name != q.alt_brand]
        return replace(it, brand=_pick(rng, lux))
    if cause == "alt-original":
        return replace(it, brand=q.alt_brand)
    if cause == "negation":
        return replace(it, material=q.negated)
    if cause == "need" and q.qtype == "knowledge":
        lacking = [s for s in cat.substances if q.need not in C.KNOWLEDGE[s]]
        return replace(it, material=_pick(rng, lacking), features=())
    if cause == "need":
        others = [f for f in cat.features if f != q.need]
        return replace(it, features=(_pick(rng, others),))
    if cause == "audience":
        wrong = [a for a in C.AUDIENCES if a != q.audience]
        return replace(it, audience=_pick(rng, wrong))
    if cause in ("attr-mismatch", "attr-unstated"):
        kind, value = q.attrs[int(rng.integers(len(q.attrs)))]
        if cause == "attr-unstated":
            return replace(it, **{kind: None})
        return replace(it, **{kind: _pick(rng, [v for v in _attr_values(cat, kind) if v != value])})
    return it


def sample_pair(
    rng: np.random.Generator, qtype: str, label: int, cfg: WorldConfig, max_tries: int = 200
) -> tuple[Query, Item, np.ndarray]:
    """A (query, item, gold verdicts [R]) with rule_label(verdicts) == label."""
    for _ in range(max_tries):
        q = sample_query(rng, qtype, label)
        causes = _causes(q, label)
        if not causes:
            continue
        own = _OWN_CAUSE.get(qtype)
        cause = own if own in causes and rng.random() < 0.7 else _pick(rng, causes)
        it = _apply_cause(rng, q, _matching_item(rng, q, cfg), cause, cfg)
        verdicts = judge(q, it)
        if int(rule_label(verdicts)) == label:
            return q, it, verdicts
    raise RuntimeError(f"no {qtype} pair with label {label} in {max_tries} tries")


def feasible_types(label: int) -> tuple[str, ...]:
    """Query types that can yield `label` (plain queries carry no attribute: never 3)."""
    return tuple(t for t in QUERY_TYPES if not (label == 3 and t == "plain"))
