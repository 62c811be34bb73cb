"""Rule-aware reward shaping, RRS (SPEC 4).

Two halves:
  host    `parsed_to_arrays(texts, order)`: completions -> fixed-shape arrays via
          agrl.task.format.parse_batch (pred_label [N], pred_verdicts [N, R], format_ok [N]).
  jit     `compute_rewards(...)`: those arrays and the gold side -> reward [N] and the
          reward components [N, C] (names in COMPONENTS).

The built-in reward ("rrs"), per sequence:
    correct = 1[pred_label == gold_label]
    r_label = correct, or 1 - |pred_label - gold_label| / 3 with cfg.ordinal
    r_step  = mean over applicable dims d of 1[pred_verdicts_d == gold_verdicts_d]
              (applicable: the gold verdict is known, code >= 0)
    r_cons  = 1[rule_label(pred_verdicts) == pred_label]           (rule adherence)
    gate    = r_cons (gate="consistency") | r_label (gate="label", step credit only) | 1
    reward  = w_label * r_label + w_step * r_step * gate_step, times gate_all, where
              consistency: gate_all = r_cons, gate_step = 1
              label:       gate_all = 1,      gate_step = correct
              none:        gate_all = 1,      gate_step = 1
    reward  = format_fail where the response is not well formed (format_ok = 0 or no label).

Fallback without gold verdicts (user data with only a label, SPEC 3): a sequence whose
gold_has_verdicts is False, or whose gold verdicts are all unknown, scores
    r_step = 1[rule_label(pred_verdicts) == gold_label],
i.e. "the stated verdicts imply the gold label under the rule engine". `fallback_message`
is the start-up line that says so.

The rule book in force (`book`, agrl.task.rules; default the world's) decides the verdict
width R and the engine. A label-only book (no dimensions) has no r_step and no r_cons:
their columns are 0 and 1 (so no gate blocks) and `absent_components` names them, so that
metrics leave them out; the reward is w_label * r_label.

Plugging in another reward: `register_reward_fn("mine", fn)` and set `reward.fn=mine`;
fn has the signature of `rrs_reward` and returns (reward [N], components [N, C]); a fn that
takes a keyword `book` gets the rule book in force.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agrl.config import ConfigError, RewardConfig
from agrl.rl.types import Parsed
from agrl.task.format import parse_batch
from agrl.task.rules import WORLD, RuleBook, rule_label

# Columns of the components array [N, C], in this order.
COMPONENTS: tuple[str, ...] = ("correct", "r_label", "r_step", "r_cons", "format_ok", "gate")
C = len(COMPONENTS)

RewardFn = Callable[..., tuple[jax.Array, jax.Array]]
_REWARD_FNS: dict[str, RewardFn] = {}


def register_reward_fn(name: str, fn: RewardFn) -> None:
    """Make `fn` selectable as `reward.fn=name`. fn(pred_label, pred_verdicts, format_ok,
    gold_label, gold_verdicts, gold_has_verdicts, cfg) -> (reward [N], components [N, C])."""
    _REWARD_FNS[name] = fn


def get_reward_fn(name: str) -> RewardFn:
    if name not in _REWARD_FNS:
        raise ConfigError(f"reward.fn={name!r}: not registered (known: {sorted(_REWARD_FNS)})")
    return _REWARD_FNS[name]


# ---------------------------------------------------------------------------------------
# Host side: text -> arrays.


def absent_components(book: RuleBook | None) -> tuple[str, ...]:
    """Component columns that mean nothing under `book` (metrics leave them out)."""
    return () if (WORLD if book is None else book).has_rules else ("r_step", "r_cons")


def describe_reward(cfg: RewardConfig, book: RuleBook | None) -> str:
    """One start-up line: which reward components are active."""
    book = WORLD if book is None else book
    if cfg.fn != "rrs":
        return f"reward: registered fn {cfg.fn!r}"
    if not book.has_rules:
        return f"reward: r_label only ({'ordinal' if cfg.ordinal else 'exact'} label)"
    return (
        f"reward: {cfg.w_label} * r_label + {cfg.w_step} * r_step, gate={cfg.gate} "
        "(r_cons = rule adherence)"
    )


def parsed_to_arrays(
    texts: Sequence[str], order: str = "label_first", book: RuleBook | None = None
) -> Parsed:
    """Completions -> Parsed(pred_label [N] int32 (0: none), pred_verdicts [N, R] int32 (-1:
    missing), format_ok [N] bool), the fixed-shape input of `compute_rewards`."""

    book = WORLD if book is None else book
    labels, verdicts, ok = parse_batch(list(texts), order, book)
    labels = np.asarray(labels, np.int32).reshape(len(texts))
    verdicts = np.asarray(verdicts, np.int32).reshape(len(texts), book.R)
    return Parsed(labels, verdicts, np.asarray(ok, bool).reshape(len(texts)))


def fallback_message(gold_has_verdicts: np.ndarray, book: RuleBook | None = None) -> str | None:
    """The start-up line for data without gold verdicts (SPEC 3); None when all have them
    (or when the book has no dimensions: there is no step reward)."""
    if not (WORLD if book is None else book).has_rules:
        return None
    missing = int(np.size(gold_has_verdicts) - np.count_nonzero(gold_has_verdicts))
    if missing == 0:
        return None
    return (
        f"reward: {missing} of {np.size(gold_has_verdicts)} records have no gold verdicts; "
        "their step reward r_step falls back to 1[rule_label(predicted verdicts) == gold "
        "label] (the verdicts must imply the gold label)"
    )


# ---------------------------------------------------------------------------------------
# Jit side: arrays -> reward.


def label_reward(pred_label: jax.Array, gold_label: jax.Array, ordinal: bool) -> jax.Array:
    """r_label [N] f32: 1[pred == gold], or 1 - |pred - gold| / 3 (0 for no label)."""
    if not ordinal:
        return (pred_label == gold_label).astype(jnp.float32)
    distance = jnp.abs(pred_label - gold_label).astype(jnp.float32)
    return jnp.where(pred_label > 0, 1.0 - distance / 3.0, 0.0)


def step_reward(
    pred_verdicts: jax.Array,
    gold_verdicts: jax.Array,
    gold_label: jax.Array,
    gold_has_verdicts: jax.Array,
    book: RuleBook | None = None,
) -> jax.Array:
    """r_step [N] f32 = mean_{d: gold_d >= 0} 1[pred_d == gold_d]; [N, R] int codes in.

    Where no gold verdict is known: 1[rule_label(pred_verdicts) == gold_label]. A label-only
    book: 0 (absent).
    """
    book = WORLD if book is None else book
    if not book.has_rules:
        return jnp.zeros(gold_label.shape, jnp.float32)
    applicable = (gold_verdicts >= 0) & gold_has_verdicts[:, None]  # [N, R]
    n_applicable = applicable.sum(-1)  # [N]
    hits = ((pred_verdicts == gold_verdicts) & applicable).sum(-1)
    per_dim = hits / jnp.maximum(n_applicable, 1)
    implied = (rule_label(pred_verdicts, xp=jnp, book=book) == gold_label).astype(jnp.float32)
    return jnp.where(n_applicable > 0, per_dim, implied).astype(jnp.float32)


def consistency_reward(
    pred_label: jax.Array, pred_verdicts: jax.Array, book: RuleBook | None = None
) -> jax.Array:
    """r_cons [N] f32 = 1[rule_label(pred_verdicts) == pred_label] (rule adherence); 1 for
    a label-only book (absent: no gate blocks)."""
    book = WORLD if book is None else book
    if not book.has_rules:
        return jnp.ones(pred_label.shape, jnp.float32)
    return (rule_label(pred_verdicts, xp=jnp, book=book) == pred_label).astype(jnp.float32)


def rrs_reward(
    pred_label: jax.Array,
    pred_verdicts: jax.Array,
    format_ok: jax.Array,
    gold_label: jax.Array,
    gold_verdicts: jax.Array,
    gold_has_verdicts: jax.Array,
    cfg: RewardConfig,
    book: RuleBook | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The built-in RRS reward (module docstring).  All inputs [N] or [N, R]; cfg, book static.

    Returns reward [N] f32 and components [N, C] f32 (columns: COMPONENTS).
    """
    pred_label = pred_label.astype(jnp.int32)
    gold_label = gold_label.astype(jnp.int32)
    # A response without a label cannot be scored, whatever the parser said of its format.
    well_formed = format_ok.astype(bool) & (pred_label >= 1) & (pred_label <= 4)
    correct = (pred_label == gold_label).astype(jnp.float32)
    r_label = label_reward(pred_label, gold_label, cfg.ordinal)
    has = gold_has_verdicts.astype(bool)
    r_step = step_reward(pred_verdicts, gold_verdicts, gold_label, has, book)
    r_cons = consistency_reward(pred_label, pred_verdicts, book)

    ones = jnp.ones_like(r_label)
    gate_all = {"consistency": r_cons, "label": ones, "none": ones}[cfg.gate]
    gate_step = {"consistency": ones, "label": correct, "none": ones}[cfg.gate]
    shaped = gate_all * (cfg.w_label * r_label + cfg.w_step * gate_step * r_step)
    reward = jnp.where(well_formed, shaped, cfg.format_fail)

    gate = gate_all * gate_step
    components = jnp.stack(
        [correct, r_label, r_step, r_cons, well_formed.astype(jnp.float32), gate], axis=-1
    )
    return reward, components


register_reward_fn("rrs", rrs_reward)


def compute_rewards(
    pred_label: jax.Array,
    pred_verdicts: jax.Array,
    format_ok: jax.Array,
    gold_label: jax.Array,
    gold_verdicts: jax.Array,
    gold_has_verdicts: jax.Array,
    cfg: RewardConfig,
    book: RuleBook | None = None,
) -> tuple[jax.Array, jax.Array]:
    """reward [N], components [N, C] from the function named by cfg.fn.  Jittable, cfg and
    book (the rule book in force, default the world's) static.

    pred_label [N] int (0: no label), pred_verdicts [N, R] int (-1: missing), format_ok [N]
    bool, gold_label [N] int 1..4, gold_verdicts [N, R] int, gold_has_verdicts [N] bool.
    """
    fn = get_reward_fn(cfg.fn)
    kw = {"book": book} if _takes_book(fn) else {}
    reward, components = fn(
        pred_label,
        pred_verdicts,
        format_ok,
        gold_label,
        gold_verdicts,
        gold_has_verdicts,
        cfg,
        **kw,
    )
    n = pred_label.shape[0]
    if reward.shape != (n,) or components.shape != (n, C):
        raise ValueError(
            f"reward.fn={cfg.fn!r} returned shapes {reward.shape}, {components.shape}; "
            f"expected ({n},), ({n}, {C}) with columns {COMPONENTS}"
        )
    return reward, components


def _takes_book(fn: RewardFn) -> bool:
    try:
        return "book" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def component(components: jax.Array, name: str) -> jax.Array:
    """One column of components [N, C] by name, e.g. component(c, "correct") -> [N]."""
    return components[..., COMPONENTS.index(name)]
