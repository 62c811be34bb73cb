"""A rule-based reader of the rendered prompt: what the prompt alone lets a judge know.

The reader sees only the two texts a policy sees (the query and the item title) and the
catalog (words, synonyms, aliases, templates, the knowledge table). It parses them back to
a structured (Query, Item) and judges them with the gold machinery. Where its label differs
from the gold label, the prompt does not carry what the gold judgement used: no learner can
do better there, so the per-type and per-label agreement is the prompt-only ceiling that
docs/world.md reports (scripts/world_ceiling.py).

`fact_exposure` counts, for each knowledge fact (substance, property), how many gold
rationales of a split spell it out: how often a learner sees a fact the evaluation needs.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import cache

from agrl.task.rules import rule_label
from agrl.world import catalog as C
from agrl.world.generate import GOLD_KNOWLEDGE, Item, Query, judge

_ALTERNATIVE_MARKERS = frozenset({"alternative", "dupe", "like", "style"})
_QA_MARKERS = frozenset({"which", "what", "there", "best"})
_NEGATORS = frozenset(words[0] for words in C.NEGATION_WORDS)


@cache
def lexicon() -> dict[str, tuple[str, str]]:
    """Surface word -> (kind, canonical value) for every word the world can render.

    kinds: cat, brand, color, size, audience, substance, need (a feature or a property:
    the judge treats both alike), filler. A word with two meanings raises ValueError.
    """
    entries: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for c in C.CATEGORIES:
        for w in (c.name, *c.synonyms):
            entries[w].add(("cat", c.name))
        for f in c.features:
            entries[f].add(("need", f))
    for b in C.BRANDS:
        for w in (b.name, *b.aliases):
            entries[w].add(("brand", b.name))
    for colour in C.COLORS:
        for w in (colour, *C.COLOR_SYNONYMS.get(colour, ())):
            entries[w].add(("color", colour))
    for a in C.AUDIENCES:
        for w in (a, *C.AUDIENCE_SYNONYMS[a]):
            entries[w].add(("audience", a))
    for s in C.SIZES:
        entries[s].add(("size", s))
    for s in C.substances():
        entries[s].add(("substance", s))
    for p in C.properties():
        entries[p].add(("need", p))
    for f in C.TITLE_FILLERS:
        entries[f].add(("filler", f))
    clashes = {w: sorted(m) for w, m in entries.items() if len(m) > 1}
    if clashes:
        raise ValueError(f"the catalog renders words with two meanings: {clashes}")
    return {w: next(iter(m)) for w, m in entries.items()}


def _unknown(text: str, word: str) -> ValueError:
    return ValueError(f"{text!r}: the word {word!r} is not in the catalog")


def read_query(text: str) -> Query:
    """The structured query a reader recovers from the query text alone."""
    lex = lexicon()
    words = text.split()
    fields: dict = {"attrs": []}
    negated_next = False
    cat = brand = None
    for w in words:
        if w in _NEGATORS:
            negated_next = True
            continue
        if w in lex:
            kind, value = lex[w]
        elif w in _ALTERNATIVE_MARKERS | _QA_MARKERS or w in {"to", "cheaper", "affordable"}:
            continue
        elif w in {"is", "has", "a", "for", "of"}:
            continue
        else:
            raise _unknown(text, w)
        if kind == "substance" and negated_next:
            fields["negated"] = value
        elif kind in ("substance", "color", "size"):
            fields["attrs"].append(("material" if kind == "substance" else kind, value))
        elif kind == "cat":
            cat = value
        elif kind == "brand":
            brand = value
        elif kind in ("audience", "need"):
            fields[kind] = value
        negated_next = False
    if cat is None:
        raise ValueError(f"{text!r}: no category word")
    alternative = bool(_ALTERNATIVE_MARKERS & set(words)) or "cheaper" in words
    qa = bool(_QA_MARKERS & set(words))
    qtype = (
        "alternative" if alternative else "negation" if "negated" in fields
        else "qa" if qa else "knowledge" if "need" in fields
        else "attribute" if fields["attrs"] else "plain"
    )  # fmt: skip
    return Query(
        qtype=qtype,
        cat=cat,
        brand=None if alternative else brand,
        alt_brand=brand if alternative else None,
        audience=fields.get("audience"),
        attrs=tuple(fields["attrs"]),
        negated=fields.get("negated"),
        need=fields.get("need"),
    )


def read_item(text: str) -> Item:
    """The structured item a reader recovers from the title alone (None: not stated)."""
    lex = lexicon()
    fields: dict = {"features": []}
    for w in text.split():
        if w not in lex:
            raise _unknown(text, w)
        kind, value = lex[w]
        if kind == "need":
            fields["features"].append(value)
        elif kind == "substance":
            fields["material"] = value
        elif kind != "filler":
            fields[kind] = value
    if "cat" not in fields or "brand" not in fields:
        raise ValueError(f"{text!r}: a title states a category and a brand")
    fields["features"] = tuple(fields["features"])
    return Item(**fields)


def read_label(query: str, item: str) -> int:
    """The gold judge's label of what the reader parses from the two texts."""
    return int(rule_label(judge(read_query(query), read_item(item))))


def prompt_ceiling(records: Iterable[dict]) -> dict[tuple[str, int], tuple[int, int]]:
    """(query type, gold label) -> (records the reader labels right, records)."""
    out: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        key = (r["query_type"], int(r["label"]))
        out[key][0] += int(read_label(r["query"], r["item"]) == int(r["label"]))
        out[key][1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(out.items())}


_FACT = re.compile(r"(\S+) (is|not) (\S+)")


def fact_exposure(records: Iterable[dict], field: str = "rationale") -> Counter:
    """(substance, property, holds) -> how many records' `field` state that fact.

    field: "rationale" (the gold rationale: what the oracle SFT sees) or "response" (the
    teacher's response of an sft record). Facts are the "<substance> is|not <property>"
    phrases of the item reading; only pairs of the knowledge table's vocabulary count.
    """
    subs, props = set(C.substances()), set(C.properties())
    seen: Counter = Counter()
    for r in records:
        item_part = r[field].split("|")[1]
        for s, sign, p in _FACT.findall(item_part):
            if s in subs and p in props:
                seen[(s, p, sign == "is")] += 1
    return seen


def needed_fact(record: dict) -> tuple[str, str, bool] | None:
    """The knowledge fact (substance, property, holds) the gold judgement uses, or None."""
    q, it = read_query(record["query"]), read_item(record["item"])
    if q.need is None or q.need in it.features or it.material is None:
        return None
    return (it.material, q.need, q.need in GOLD_KNOWLEDGE[it.material])
