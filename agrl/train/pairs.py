"""DPO's training pairs: pass@N mining from the policy (SPEC 6) and the on-disk pair cache
that a resumed DPO run reuses instead of mining again."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from agrl.config import Config
from agrl.eval.policy_eval import sample_correct
from agrl.sampling import make_sampler
from agrl.task.data import encode_prompts, encode_responses, pad_left, pad_right
from agrl.task.format import gold_text
from agrl.task.rules import load_rule_book
from agrl.task.tokenizer import eos_ids
from agrl.train.loop import RunError


def mine_pairs(params, cfg: Config, tok, records: list[dict], key: jax.Array) -> dict:
    """pass@N pairs from the policy: per prompt, a correct sample is chosen and a wrong one
    rejected; when none is correct the gold response is chosen; prompts with no wrong
    sample give no pair.  Returns token arrays and mining statistics."""
    order, N, book = cfg.train.response_order, cfg.dpo.pass_n, load_rule_book(cfg.task.rule_book)
    sampler = make_sampler(
        cfg.model,
        dataclasses.replace(cfg.sampling, temperature=cfg.dpo.temperature, top_k=0, top_p=1.0),
        eos_ids=tuple(eos_ids(tok)),
        pad_id=int(tok.pad_token_id),
        group_size=N,
    )
    prompts = encode_prompts(tok, records, order)
    gold = encode_responses(tok, [gold_text(r, order, book) for r in records])
    chosen, rejected, keep, n_none_right = [], [], [], 0
    bs = max(1, 64 // N)
    for start in tqdm(range(0, len(records), bs), desc="dpo: mining pairs", dynamic_ncols=True):
        sl = slice(start, min(start + bs, len(records)))
        seqs = prompts[sl]
        ids, mask = pad_left(seqs, max(len(s) for s in seqs), int(tok.pad_token_id))
        gold_labels = np.asarray([r["label"] for r in records[sl]])
        k = jax.random.fold_in(key, start)
        toks, m, correct = sample_correct(
            sampler, params, tok, ids, mask, gold_labels, k, order, book
        )
        for j, rec_i in enumerate(range(sl.start, sl.stop)):
            rows = range(j * N, (j + 1) * N)
            right = [r for r in rows if correct[j, r - j * N]]
            wrong = [r for r in rows if r not in right]
            if not wrong:
                continue
            if right:
                chosen.append(toks[right[0]][m[right[0]]].tolist())
            else:
                chosen.append(gold[rec_i])
                n_none_right += 1
            rejected.append(toks[wrong[0]][m[wrong[0]]].tolist())
            keep.append(rec_i)
    if not keep:
        raise RunError("DPO mining found no prompt with a wrong sample: nothing to learn")
    T, pad = cfg.sampling.max_new_tokens, int(tok.pad_token_id)
    kept = [prompts[i] for i in keep]
    p_ids, p_mask = pad_left(kept, max(len(s) for s in kept), pad)
    c_ids, c_mask = pad_right([c[:T] for c in chosen], T, pad)
    r_ids, r_mask = pad_right([r[:T] for r in rejected], T, pad)
    stats = {
        "mined_prompts": len(records),
        "pairs": len(keep),
        "pairs_gold_chosen": n_none_right,
        "all_right_prompts": len(records) - len(keep),
    }
    arrays = {
        "prompt_ids": p_ids,
        "prompt_mask": p_mask,
        "chosen_ids": c_ids,
        "chosen_mask": c_mask,
        "rejected_ids": r_ids,
        "rejected_mask": r_mask,
    }
    return {"arrays": arrays, "stats": stats}


PAIRS_ARRAYS, PAIRS_STATS = "pairs.npz", "pairs.json"


def save_pair_cache(out: Path, pairs: dict[str, np.ndarray], stats: dict) -> None:
    """Write the mined pairs so that a kill at any point leaves either the whole cache or
    none that counts: each file goes to a temporary name and is renamed into place, the
    arrays first; pairs.json, written last and recording the arrays' size, is the commit
    marker."""
    tmp = out / (PAIRS_ARRAYS + ".tmp")
    with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
        np.savez(f, **pairs)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / PAIRS_ARRAYS)
    marker = dict(stats, arrays_bytes=(out / PAIRS_ARRAYS).stat().st_size)
    tmp = out / (PAIRS_STATS + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(marker, indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / PAIRS_STATS)


def load_pair_cache(out: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    """(pairs, stats) of a complete cache written by save_pair_cache, else None (no cache,
    or one a kill left incomplete: the pairs are then mined again)."""
    arrays, marker = out / PAIRS_ARRAYS, out / PAIRS_STATS
    try:
        stats = json.loads(marker.read_text())
        if arrays.stat().st_size != stats.pop("arrays_bytes"):
            return None
        with np.load(arrays) as f:
            pairs = {k: f[k] for k in f.files}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile):
        return None
    return pairs, stats


__all__ = ["PAIRS_ARRAYS", "PAIRS_STATS", "load_pair_cache", "mine_pairs", "save_pair_cache"]
