"""Pre-flight checks of a run's data against its config, right after tokenisation and
before any compile: lengths vs the buckets and positions, vocabulary vs the model. A
failure is a RunError that names file, line and record."""

from __future__ import annotations

import json
from collections.abc import Sequence

from agrl.config import Config
from agrl.train.loop import RunError


def _line_of(path: str, rec_id: str) -> int | None:
    """The line of the record `rec_id` in a JSONL file (for messages; None if not found)."""
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and rec.get("id", f"line-{n}") == rec_id:
                        return n
    except OSError:
        return None
    return None


def check_lengths(
    cfg: Config,
    path: str,
    records: Sequence[dict],
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]] | None = None,
    what: str = "prompt",
) -> None:
    """Pre-flight, right after tokenisation and before any compile: every record of a split
    fits. A sampled split (responses=None: evaluation, DPO mining, RL rollouts): the prompt
    fits the largest bucket of sampling.prompt_buckets and, with sampling.max_new_tokens
    generated tokens, model.max_position_embeddings. A teacher-forced split (SFT, with the
    record's response ids): prompt + response fits model.max_position_embeddings. The first
    record that does not fit is a RunError naming file, line, id and lengths vs the limit;
    `what` names the sampled text in it (e.g. a prompt with its guidance hint)."""
    bucket, T = cfg.sampling.prompt_buckets[-1], cfg.sampling.max_new_tokens
    limit = cfg.model.max_position_embeddings
    problems: list[tuple[int, str]] = []
    for i, p in enumerate(prompts):
        n = len(p)
        if responses is not None:
            r = len(responses[i])
            if n + r > limit:
                why = f"prompt + response have {n} + {r} = {n + r} tokens"
                problems.append((i, f"{why} > model.max_position_embeddings={limit}"))
        elif n > bucket:
            why = f"{what} has {n} tokens > the largest bucket sampling.prompt_buckets[-1]"
            problems.append((i, f"{why}={bucket}; add a larger bucket"))
        elif n + T > limit:
            why = f"{what} + sampling.max_new_tokens = {n} + {T} = {n + T} positions"
            problems.append((i, f"{why} > model.max_position_embeddings={limit}"))
    if problems:
        i, why = problems[0]
        rec_id = records[i]["id"]
        line = _line_of(path, rec_id)
        where = f"{path}:{line}" if line is not None else str(path)
        more = f" (and {len(problems) - 1} more records)" if len(problems) > 1 else ""
        raise RunError(f"{where}: record {rec_id!r}: {why}{more}")


def check_vocab(cfg: Config, tok) -> None:
    """The model must have a row for every token id the tokenizer can produce."""
    if cfg.model.vocab_size < len(tok):
        raise RunError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
            f"{len(tok)} tokens ({cfg.paths.tokenizer}); set model.vocab_size >= {len(tok)}"
        )


__all__ = ["check_lengths", "check_vocab"]
