"""The typed data that flows between the steps of an RL iteration (SPEC 1, 4-6).

All are NamedTuples, hence pytrees: they pass through jax.jit, jax.device_get and
jax.tree.map whole. Vocabulary: B prompts, G generations per prompt, N = B * G sequences,
P prompt tokens, T completion tokens, R rule dims, C reward components, Lg gold tokens.

    sampler -> tokens -> host parse -> Parsed
    Parsed + Gold + levels -> `score_and_guide` (jit) -> Scores
    Scores + tokens -> Rollout (host arrays of the mixed group, for metrics and inspection)
    Rollout + reference log-probs -> RLBatch -> the jitted RL update
"""

from __future__ import annotations

from typing import Any, NamedTuple

Array = Any  # jax.Array or np.ndarray: the same pytree on device and on host


class Parsed(NamedTuple):
    """Host parse of N completions: the fixed-shape input of the rewards (SPEC 4)."""

    pred_label: Array  # [N] int32, 0: no label
    pred_verdicts: Array  # [N, R] int32 verdict codes, -1: missing
    format_ok: Array  # [N] bool


class Gold(NamedTuple):
    """The gold side of B prompts (per prompt; repeated G times inside the scoring)."""

    label: Array  # [B] int32 1..4
    verdicts: Array  # [B, R] int32, -1: unknown
    has_verdicts: Array  # [B] bool
    ids: Array  # [B, Lg] int32 gold response tokens (label first), pad after
    length: Array  # [B] int32 tokens of the gold response


class Scores(NamedTuple):
    """What `score_and_guide` returns for one group of N rollouts."""

    reward: Array  # [N] f32
    components: Array  # [N, C] f32, columns agrl.rl.rewards.COMPONENTS
    advantages: Array  # [N] f32, over each group of G
    acc: Array  # [B] f32 group label accuracy
    zero_var: Array  # [B] bool all G rewards equal
    keep: Array  # [B] bool group kept by the difficulty filter
    triggered: Array  # [B] bool AGR trigger (guidance.is_triggered)
    guided: Array  # [B, G] bool slots to re-roll with guidance (all False: no guidance)
    forced_ids: Array  # [N, Lg] int32 forced prefix per row, pad past forced_len
    forced_len: Array  # [N] int32 forced prefix length, 0 for unguided rows


class Rollout(NamedTuple):
    """One iteration's mixed group (guided rows replaced), as host arrays."""

    prompt_idx: Array  # [B] int64 indices into the prompt pool
    tokens: Array  # [N, T] int32 completions
    mask: Array  # [N, T] bool generated tokens (forced ones included)
    forced_mask: Array  # [N, T] bool tokens written by the forced prefix
    reward: Array  # [N] f32 reward of the mixed group
    components: Array  # [N, C] f32
    advantages: Array  # [N] f32 over the mixed group
    guided: Array  # [N] bool rows re-rolled with guidance
    levels: Array  # [B] int32 guidance level used (read before the replay update)
    acc_unguided: Array  # [B] f32 group accuracy of the unguided rollouts
    triggered: Array  # [B] bool acc_unguided <= tau
    zero_var_unguided: Array  # [B] bool before AGR
    zero_var: Array  # [B] bool of the mixed group
    keep: Array  # [B] bool of the mixed group (difficulty filter)


class RLBatch(NamedTuple):
    """The input of one jitted RL update (SPEC 6); every field is split on its rows N."""

    prompt_ids: Array  # [N, P] int32 left-padded, each prompt repeated G times
    prompt_mask: Array  # [N, P] bool
    completion_ids: Array  # [N, T] int32
    completion_mask: Array  # [N, T] bool loss tokens: generated and group kept
    forced_mask: Array  # [N, T] bool forced-prefix tokens (within completion_mask)
    advantages: Array  # [N] f32
    ref_logps: Array  # [N, T] f32 reference policy
    old_logps: Array | None = None  # [N, T] f32 behaviour policy; None when loss.mu == 1


__all__ = ["Gold", "Parsed", "RLBatch", "Rollout", "Scores"]
