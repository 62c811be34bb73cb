"""Adaptive guided replay, AGR (SPEC 5).

One RL iteration uses these pieces in this order (`agrl.rl.score.score_and_guide` composes
steps 1-3 in one jitted function; agrl.train.rollout the iteration):
  1. G unguided rollouts per prompt -> group label accuracy acc [B].
  2. `select_guided_slots`: groups with acc <= tau get k = clip(round(G (0.5 - acc)), 1,
     G // 2) of their lowest-reward rollouts replaced by guided ones, at most `budget`
     slots in the batch (static shapes: the guided re-rollout has `budget` rows).
  3. `build_forced_prefixes`: a guided rollout starts from a forced prefix, the gold label
     token then the first L tokens of the gold rationale; L follows the prompt's level in
     the replay table (`guidance_length`).
  4. Rewards and advantages over the mixed group; `forced_token_weights` decides how the
     forced tokens enter the loss.
  5. `update_replay` with the unguided accuracy; `sample_replay` picks unsolved hard
     prompts to re-enter the next batch.
Jittable (jax): steps 2-4. Host (numpy, plain arrays, checkpointable): the replay table.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agrl.config import GuidanceConfig

LOSS_MODES = ("include", "mask", "mask_if_negative", "offpolicy")


# ---------------------------------------------------------------------------------------
# The two thresholds (numpy or jax arrays alike): every caller uses these.


def is_triggered(acc, tau: float):
    """AGR trigger of a visit [B] bool: the group's unguided accuracy acc <= tau (SPEC 5)."""
    return acc <= tau


def is_solved(ema, tau: float):
    """A prompt counts as solved [M] bool once its accuracy EMA passes tau: its level then
    falls and replay stops drawing it (SPEC 5)."""
    return ema > tau


# ---------------------------------------------------------------------------------------
# Trigger and slots (jit).


def slot_counts(acc: jax.Array, group_size: int) -> jax.Array:
    """k [B] int32 = clip(round(G * (0.5 - acc)), 1, G // 2), the guided slots a triggered
    group asks for.  acc [B] f32 is a group accuracy c / G.

    Computed in integers from the correct count c = round(acc * G), with rounding half up
    (G * (0.5 - acc) = (G - 2c) / 2 is a half-integer exactly when G is odd), so numpy and
    jax agree bit for bit.
    """
    n_correct = jnp.round(acc * group_size).astype(jnp.int32)
    k = (group_size - 2 * n_correct + 1) // 2
    return jnp.clip(k, 1, group_size // 2)


def select_guided_slots(
    acc: jax.Array, rewards: jax.Array, tau: float, group_size: int, budget: int
) -> jax.Array:
    """Which rollouts to replace by guided ones: guided [B, G] bool.  acc [B], rewards [B, G].

    Group b is triggered when acc_b <= tau and then wants its k_b (`slot_counts`) lowest-
    reward rollouts (ties: lower index first). When the wanted slots exceed the budget they
    are granted round-robin: every triggered group's first slot before any group's second,
    and within a round the least accurate group first (ties: lower b). So the result is
    deterministic and as many groups as possible get at least one guided rollout, which
    is what breaks a zero-variance group.
    """
    b, g = rewards.shape
    triggered = is_triggered(acc, tau)  # [B]
    k = slot_counts(acc, group_size)  # [B]
    # rank of each rollout inside its group by (reward, index): 0 = lowest reward
    order = jnp.argsort(rewards, axis=-1, stable=True)  # [B, G]
    rank = jnp.argsort(order, axis=-1, stable=True)  # [B, G]
    wanted = triggered[:, None] & (rank < k[:, None])  # [B, G]
    # global priority: round (= rank), then accuracy (as a count), then group index
    n_correct = jnp.round(acc * group_size).astype(jnp.int32)
    key = (rank * (group_size + 1) + n_correct[:, None]) * b + jnp.arange(b)[:, None]
    key = jnp.where(wanted, key, jnp.iinfo(jnp.int32).max)  # unwanted slots sort last
    position = jnp.argsort(jnp.argsort(key.reshape(-1), stable=True), stable=True)
    return wanted & (position.reshape(b, g) < budget)


# ---------------------------------------------------------------------------------------
# Forced prefixes (jit).


def guidance_length(gold_len: jax.Array, levels: jax.Array, max_level: int) -> jax.Array:
    """L [B] int32 = 1 + round(level / max_level * (gold_len - 1)), at most gold_len.

    gold_len counts the gold label token plus the rationale tokens; level 0 forces the
    label only, level max_level the whole gold response. Rounding half up, in integers.
    """
    rationale = jnp.maximum(gold_len - 1, 0)
    if max_level == 0:
        forced_rationale = jnp.zeros_like(rationale)
    else:
        forced_rationale = (2 * levels * rationale + max_level) // (2 * max_level)
    return jnp.minimum(1 + forced_rationale, gold_len).astype(jnp.int32)


def build_forced_prefixes(
    gold_ids: jax.Array,
    gold_len: jax.Array,
    levels: jax.Array,
    max_level: int,
    group_size: int,
    guided: jax.Array,
    pad_id: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Forced prefixes for the sampler: (forced_ids [B*G, Lg], forced_len [B*G] int32).

    gold_ids [B, Lg] padded gold responses (label token first), gold_len [B], levels [B],
    guided [B, G] bool. Row b*G + g holds the first L_b gold tokens where guided, else
    length 0; positions at or past forced_len hold pad_id.
    """
    b, lg = gold_ids.shape
    length = guidance_length(gold_len, levels, max_level)  # [B]
    forced_len = jnp.where(guided, length[:, None], 0).reshape(b * group_size)
    ids = jnp.repeat(gold_ids, group_size, axis=0)  # [B*G, Lg]
    keep = jnp.arange(lg)[None, :] < forced_len[:, None]
    return jnp.where(keep, ids, pad_id), forced_len.astype(jnp.int32)


# ---------------------------------------------------------------------------------------
# Forced tokens in the loss (jit).


def forced_token_weights(
    forced_mask: jax.Array, advantages: jax.Array, logps: jax.Array, mode: str, gamma: float
) -> tuple[jax.Array, jax.Array]:
    """How each token enters the policy loss: (weight [N, T] f32, use_clip [N, T] bool).

    forced_mask [N, T] bool (tokens written by the forced prefix), advantages [N],
    logps [N, T] under the current policy. Generated tokens always get weight 1, clipped.
    Forced tokens, by mode:
      include            weight 1, clipped surrogate like any token (G2RPO-A)
      mask               weight 0: forced tokens never count
      mask_if_negative   weight 1[A > 0]: the gold prefix is only ever pushed up (default)
      offpolicy          weight f(p) = p / (p + gamma), p = exp(logp), no clipping; the loss
                         term is -f(p) * A (LUFFY policy shaping). As in LUFFY's
                         reference code the gradient flows through the whole fraction,
                         grad f = gamma / (p + gamma)^2 * grad p, which boosts
                         low-probability gold tokens; nothing is stop-gradiented.
    A token with weight 0 is dropped from the loss and from the token counts.
    """
    forced = forced_mask.astype(bool)
    if mode == "include":
        forced_weight = jnp.ones_like(logps)
    elif mode == "mask":
        forced_weight = jnp.zeros_like(logps)
    elif mode == "mask_if_negative":
        forced_weight = jnp.broadcast_to((advantages > 0)[:, None], logps.shape).astype(logps.dtype)
    elif mode == "offpolicy":
        p = jnp.exp(logps)
        forced_weight = p / (p + gamma)
    else:
        raise ValueError(f"loss.forced_tokens={mode!r}: must be one of {LOSS_MODES}")
    weight = jnp.where(forced, forced_weight, 1.0)
    use_clip = ~forced if mode == "offpolicy" else jnp.ones_like(forced)
    return weight, use_clip


# ---------------------------------------------------------------------------------------
# Replay table (host, numpy).


class ReplayTable(NamedTuple):
    """Per-prompt AGR state over the RL pool of M prompts (dense arrays, index = prompt)."""

    ema: np.ndarray  # [M] f32  EMA of unguided group accuracy (valid where last_step >= 0)
    streak: np.ndarray  # [M] i32  consecutive triggered (failed) visits
    level: np.ndarray  # [M] i32  guidance level 0..max_level
    last_step: np.ndarray  # [M] i32  step of the last visit, -1: never seen
    times_guided: np.ndarray  # [M] i32  visits that received guided rollouts


def init_replay(num_prompts: int) -> ReplayTable:
    return ReplayTable(
        ema=np.zeros(num_prompts, np.float32),
        streak=np.zeros(num_prompts, np.int32),
        level=np.zeros(num_prompts, np.int32),
        last_step=np.full(num_prompts, -1, np.int32),
        times_guided=np.zeros(num_prompts, np.int32),
    )


def update_replay(
    table: ReplayTable,
    prompt_idx: np.ndarray,
    acc: np.ndarray,
    triggered: np.ndarray,
    step: int,
    cfg: GuidanceConfig,
    *,
    guided: np.ndarray | None = None,
) -> ReplayTable:
    """The table after visiting prompts prompt_idx [B] (distinct) at `step`; pure.

    acc [B]: unguided group accuracy; triggered [B]: acc <= tau; guided [B]: the group got
    guided slots (default: triggered). Per visited prompt, in this order:
        ema    <- acc on the first visit, else d * ema + (1 - d) * acc   (d = ema_decay)
        streak <- streak + 1 if triggered else 0
        level  <- min(level + 1, max_level) and streak <- 0   if streak >= level_up_streak
        level  <- max(level - 1, 0)                            if ema > tau
    The level used to guide a prompt at a step is the one read before this update.
    """
    idx = np.asarray(prompt_idx, np.int64)
    if np.unique(idx).size != idx.size:
        raise ValueError(f"update_replay: prompt_idx has duplicates: {np.sort(idx).tolist()}")
    acc = np.asarray(acc, np.float32)
    triggered = np.asarray(triggered, bool)
    guided = triggered if guided is None else np.asarray(guided, bool)

    first = table.last_step[idx] < 0
    d = np.float32(cfg.ema_decay)
    ema = np.where(first, acc, d * table.ema[idx] + (1 - d) * acc).astype(np.float32)
    streak = np.where(triggered, table.streak[idx] + 1, 0)
    level = table.level[idx]
    rise = streak >= cfg.level_up_streak
    level = np.where(rise, np.minimum(level + 1, cfg.max_level), level)
    streak = np.where(rise, 0, streak)
    level = np.where(is_solved(ema, cfg.tau), np.maximum(level - 1, 0), level)

    new = {name: np.array(arr, copy=True) for name, arr in table._asdict().items()}
    new["ema"][idx] = ema
    new["streak"][idx] = streak
    new["level"][idx] = level
    new["last_step"][idx] = step
    new["times_guided"][idx] += guided.astype(np.int32)
    return ReplayTable(**new)


def sample_replay(
    table: ReplayTable,
    rng: np.random.Generator,
    n: int,
    p_replay: float,
    tau: float,
    *,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Indices (int64, at most n, distinct) of unsolved hard prompts to re-enter a batch.

    Candidates: seen prompts whose accuracy EMA is still <= tau, minus `exclude` (e.g. the
    prompts already in the next batch). Each candidate enters with probability p_replay;
    if more than n do, n of them are kept uniformly at random.
    """
    candidate = (table.last_step >= 0) & ~is_solved(table.ema, tau)
    if exclude is not None:
        candidate[np.asarray(exclude, np.int64)] = False
    pool = np.flatnonzero(candidate)
    chosen = pool[rng.random(pool.size) < p_replay]
    if chosen.size > n:
        chosen = rng.choice(chosen, size=n, replace=False)
    return chosen.astype(np.int64)


def to_state_dict(table: ReplayTable) -> dict[str, np.ndarray]:
    """Plain numpy arrays, for the checkpoint."""
    return {name: np.asarray(arr) for name, arr in table._asdict().items()}


def from_state_dict(state: dict[str, np.ndarray]) -> ReplayTable:
    """Inverse of `to_state_dict`; checks the field names and that all sizes agree."""
    names = set(ReplayTable._fields)
    if set(state) != names:
        raise ValueError(f"replay state: fields {sorted(state)}, expected {sorted(names)}")
    dtypes = {"ema": np.float32}
    table = ReplayTable(
        **{k: np.asarray(state[k], dtypes.get(k, np.int32)) for k in ReplayTable._fields}
    )
    sizes = {arr.shape for arr in table}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise ValueError(f"replay state: arrays must be [M] of one size, got {sorted(sizes)}")
    return table
