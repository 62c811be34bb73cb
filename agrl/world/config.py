"""Configuration of the relevance world and its simulated teacher (SPEC 3).

Frozen dataclasses validated on construction, like agrl/config/: a bad value raises
ConfigError naming the field. Mixes are tuples so that the configs stay hashable.
Label mixes are over labels (1, 2, 3, 4); query-type mixes over QUERY_TYPES.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agrl.config import ConfigError
from agrl.task.data import QUERY_TYPES

SPLITS: tuple[str, ...] = ("sft", "rl", "b_eval", "w_eval")


def _check(cond: bool, name: str, value, why: str) -> None:
    if not cond:
        raise ConfigError(f"{name}={value!r}: {why}")


def _check_mix(mix: tuple[float, ...], n: int, name: str) -> None:
    _check(len(mix) == n, name, mix, f"must have {n} weights")
    _check(all(w >= 0 and math.isfinite(w) for w in mix), name, mix, "weights must be >= 0")
    _check(sum(mix) > 0, name, mix, "weights must not all be 0")


@dataclass(frozen=True)
class TeacherConfig:
    """The simulated teacher that writes the `sft` responses (SPEC 3).

    Each hard query type has a systematic mistake. `*_slices` is the fraction of that
    type's slices (negated words, luxury brands, substances, features, attribute kinds) on
    which the teacher makes it; `consistency` is the probability it makes it on a record
    of an affected slice (1.0: always, so a model trained on `sft` is confidently wrong
    there and GRPO sees zero-variance groups). `label_noise` replaces the label token by a
    random label that is neither the teacher's nor the gold one (so noise never reveals a
    fact the teacher lacks); the rationale is left as written.
    """

    negation_slices: float = 0.6  # ignores "without X": negation=n/a
    alternative_slices: float = 0.6  # reads "alternative to B" as "brand B"
    knowledge_slices: float = 0.5  # lacks the substance's entry; believes its opposite
    qa_slices: float = 0.4  # reads the question as a plain query: need=n/a
    attribute_slices: float = 0.34  # takes an unstated attribute for a match
    consistency: float = 1.0
    label_noise: float = 0.03
    seed_offset: int = 7919  # the teacher's slices are drawn from seed + seed_offset

    def __post_init__(self):
        for name in (
            "negation_slices",
            "alternative_slices",
            "knowledge_slices",
            "qa_slices",
            "attribute_slices",
            "consistency",
        ):
            v = getattr(self, name)
            _check(0.0 <= v <= 1.0, f"teacher.{name}", v, "must be in [0, 1]")
        _check(0.0 <= self.label_noise < 1.0, "teacher.label_noise", self.label_noise, "in [0, 1)")


@dataclass(frozen=True)
class WorldConfig:
    """Split sizes and mixes, title noise, and the teacher (SPEC 3; docs/world.md).

    Defaults are sized for a CPU demo: generation takes a few seconds on one core.
    """

    seed: int = 0
    n_sft: int = 4000
    n_rl: int = 2000
    n_b_eval: int = 400
    n_w_eval: int = 400
    # label mixes over labels (1, 2, 3, 4); counts per label are exact (largest remainder)
    sft_label_mix: tuple[float, ...] = (0.15, 0.30, 0.15, 0.40)
    rl_label_mix: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)
    b_eval_label_mix: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)
    w_eval_label_mix: tuple[float, ...] = (0.08, 0.30, 0.07, 0.55)
    # query-type mixes over QUERY_TYPES (plain, attribute, negation, alternative, qa,
    # knowledge); a type that cannot yield the drawn label (plain for label 3) is skipped
    sft_type_mix: tuple[float, ...] = (0.25, 0.20, 0.15, 0.12, 0.13, 0.15)
    rl_type_mix: tuple[float, ...] = (0.10, 0.15, 0.20, 0.20, 0.15, 0.20)
    b_eval_type_mix: tuple[float, ...] = (0.05, 0.10, 0.25, 0.20, 0.15, 0.25)
    w_eval_type_mix: tuple[float, ...] = (0.35, 0.25, 0.10, 0.08, 0.10, 0.12)
    # title noise
    p_alias: float = 0.35  # brand written as an alias
    p_synonym: float = 0.4  # category written as a synonym
    p_extra_attr: float = 0.5  # each unasked attribute is stated in the title
    max_fillers: int = 2  # marketing words per title: uniform in 0..max_fillers
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

    def __post_init__(self):
        for name in ("n_sft", "n_rl", "n_b_eval", "n_w_eval"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 0, f"world.{name}", v, "must be an int >= 0")
        for split in SPLITS:
            _check_mix(getattr(self, f"{split}_label_mix"), 4, f"world.{split}_label_mix")
            mix = getattr(self, f"{split}_type_mix")
            _check_mix(mix, len(QUERY_TYPES), f"world.{split}_type_mix")
            _check(
                sum(mix) - mix[0] > 0,
                f"world.{split}_type_mix",
                mix,
                "needs a type other than plain (plain queries cannot have label 3)",
            )
        for name in ("p_alias", "p_synonym", "p_extra_attr"):
            v = getattr(self, name)
            _check(0.0 <= v <= 1.0, f"world.{name}", v, "must be in [0, 1]")
        _check(0 <= self.max_fillers <= 5, "world.max_fillers", self.max_fillers, "in 0..5")

    def size(self, split: str) -> int:
        return getattr(self, f"n_{split}")
