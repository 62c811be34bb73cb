"""The simulated teacher that writes the `sft` responses (SPEC 3; docs/world.md).

The teacher judges with the same machinery as the gold judge, but with systematic
blind spots, each tied to a slice chosen once per world seed:
    negation     on affected negated substances, it drops "without X" (negation=n/a)
    alternative  on affected luxury brands, it reads "alternative to B" as "brand B"
    knowledge    for affected substances it believes the opposite of the knowledge table
                 (property p holds iff it truly does not), so those facts appear
                 correctly nowhere in what it writes
    qa           on affected features, it reads the question as a plain query (need=n/a)
    attribute    for affected attribute kinds, an unstated attribute counts as a match
Its label is the rule engine's label of its own verdicts, so the rationale is
self-consistent; label noise then replaces the label token only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from agrl.task.format import render_response
from agrl.task.rules import rule_label
from agrl.world import catalog as C
from agrl.world.config import TeacherConfig
from agrl.world.generate import (
    ATTR_KINDS,
    GOLD_KNOWLEDGE,
    Item,
    Knowledge,
    Query,
    item_summary,
    judge,
    query_summary,
)


@dataclass(frozen=True)
class TeacherSlices:
    """The slices on which the teacher errs (sorted tuples, so they print and compare)."""

    negation: tuple[str, ...]  # negated substances it ignores
    alternative: tuple[str, ...]  # luxury brands whose alternative intent it misreads
    knowledge: tuple[str, ...]  # substances whose knowledge entry it lacks
    qa: tuple[str, ...]  # features whose questions it misreads
    attribute: tuple[str, ...]  # attribute kinds it assumes when unstated


def _subset(rng: np.random.Generator, pool: tuple[str, ...], frac: float) -> tuple[str, ...]:
    k = int(round(frac * len(pool)))
    return tuple(sorted(pool[i] for i in rng.choice(len(pool), size=k, replace=False)))


def draw_slices(cfg: TeacherConfig, seed: int) -> TeacherSlices:
    """Pick the affected slices: a fixed fraction of each pool, seeded by the world seed."""
    rng = np.random.default_rng([seed, cfg.seed_offset])
    luxury = tuple(b.name for b in C.BRANDS if b.tier == "luxury")
    return TeacherSlices(
        negation=_subset(rng, C.substances(), cfg.negation_slices),
        alternative=_subset(rng, luxury, cfg.alternative_slices),
        knowledge=_subset(rng, C.substances(), cfg.knowledge_slices),
        qa=_subset(rng, C.features(), cfg.qa_slices),
        attribute=_subset(rng, ATTR_KINDS, cfg.attribute_slices),
    )


def teacher_knowledge(slices: TeacherSlices) -> Knowledge:
    """The teacher's knowledge table: lacked entries are inverted over all properties."""
    every = frozenset(C.properties())
    return {
        s: (every - props) if s in slices.knowledge else props
        for s, props in GOLD_KNOWLEDGE.items()
    }


@dataclass(frozen=True)
class TeacherJudgement:
    verdicts: np.ndarray  # [R] int32, the teacher's verdicts
    label: int  # the label it writes (after label noise)
    engine_label: int  # rule_label(verdicts)
    errors: tuple[str, ...]  # the blind spots that applied to this record
    response: str


def teacher_judge(
    rng: np.random.Generator,
    q: Query,
    it: Item,
    gold_label: int,
    slices: TeacherSlices,
    know: Knowledge,
    cfg: TeacherConfig,
    order: str = "label_first",
) -> TeacherJudgement:
    """The teacher's response for one pair (one draw per blind spot, then label noise)."""
    errors = []

    def hits(applies: bool) -> bool:
        return applies and bool(rng.random() < cfg.consistency)

    seen = q
    if hits(q.negated is not None and q.negated in slices.negation):
        seen, errors = replace(seen, negated=None), [*errors, "negation"]
    if hits(q.alt_brand is not None and q.alt_brand in slices.alternative):
        seen = replace(seen, brand=q.alt_brand, alt_brand=None)
        errors.append("alternative")
    if hits(q.qtype == "qa" and q.need in slices.qa):
        seen, errors = replace(seen, need=None), [*errors, "qa"]
    use_know = GOLD_KNOWLEDGE
    if hits(seen.need is not None and it.material in slices.knowledge and not it.features):
        use_know = know
        errors.append("knowledge")
    assumed = frozenset(k for k, _ in q.attrs if k in slices.attribute)
    unstated = {"color": it.color, "size": it.size, "material": it.material}
    if not hits(any(unstated[k] is None for k in assumed)):
        assumed = frozenset()
    else:
        errors.append("attribute")
    verdicts = judge(seen, it, use_know, assumed)
    engine_label = int(rule_label(verdicts))
    label = engine_label
    if rng.random() < cfg.label_noise:
        # never the gold label: noise must not reveal what the teacher gets wrong
        options = [x for x in (1, 2, 3, 4) if x not in (engine_label, gold_label)]
        label = int(options[int(rng.integers(len(options)))])
        errors.append("label_noise")
    response = render_response(
        label, verdicts, query_summary(seen), item_summary(seen, it, use_know), order
    )
    return TeacherJudgement(verdicts, label, engine_label, tuple(errors), response)
