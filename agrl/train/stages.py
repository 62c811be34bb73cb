"""The training stages: SFT -> DPO (pass@N pair mining) -> RL, each a resumable run.

A run directory holds config.json, checkpoints/ (orbax, the WHOLE state: params, optimizer
state, step, PRNG key, data order and cursor, AGR replay table, evaluations so far),
metrics.jsonl + tb/ (TensorBoard), and at the end model/ (a Hugging Face directory with the
tokenizer) and eval.json. `resume=True` continues from the last complete checkpoint; the
resumed run equals the uninterrupted one bit for bit on CPU (tested).

The outer Python loop lives here and only composes jitted steps (agrl.train.steps) and, for
RL, the run built by agrl.train.rl_run.prepare_rl (its `step` is one agrl.train.rollout
iteration).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zipfile
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from agrl.config import Config
from agrl.eval.policy_eval import evaluate_policy, sample_correct
from agrl.parallel.distributed import is_main_process, local_copy, tree_to_host
from agrl.sampling import make_sampler
from agrl.task.data import (
    encode_prompts,
    encode_responses,
    pad_left,
    pad_right,
)
from agrl.task.format import gold_text
from agrl.task.rules import load_rule_book
from agrl.task.tokenizer import eos_ids, load_tokenizer
from agrl.train.loop import (
    Run,
    RunError,
    ZeroVarianceWatch,
    check_lengths,
    check_vocab,
    eval_records,
    finish_run,
    frozen_copy,
    key_data,
    load_policy,
    load_reference,
    load_task_data,
    optim_with,
    resolve_paths,
    say,
)
from agrl.train.metrics_log import MetricsLogger
from agrl.train.rl_run import prepare_rl
from agrl.train.rollout import (
    BatchSampler,
)
from agrl.train.steps import (
    init_train_state,
    make_dpo_step,
    make_optimizer,
    make_sft_step,
)

# ---------------------------------------------------------------------------------------
# Paths, data and models.


def _supervised_arrays(cfg: Config, tok, records, texts):
    """Padded SFT arrays, after the pre-flight length checks of the train split."""
    T, path = cfg.sampling.max_new_tokens, cfg.paths.train_data
    prompts = encode_prompts(tok, records, cfg.train.response_order)
    responses = encode_responses(tok, texts)
    too_long = [i for i, r in enumerate(responses) if len(r) > T]
    if too_long:
        i = too_long[0]
        raise RunError(
            f"{path}: record {records[i]['id']}: response has {len(responses[i])} tokens > "
            f"sampling.max_new_tokens={T}; raise it or shorten the responses"
        )
    check_lengths(cfg, path, records, prompts, responses)
    P = max(len(p) for p in prompts)
    pad = int(tok.pad_token_id)
    return (*pad_left(prompts, P, pad), *pad_right(responses, T, pad))


def _checked_eval_records(cfg: Config, tok) -> list[dict]:
    """The evaluation split (eval_records), checked before any compile: it is sampled."""
    records = eval_records(cfg)
    if records:
        prompts = encode_prompts(tok, records, cfg.train.response_order)
        check_lengths(cfg, cfg.paths.eval_data, records, prompts)
    return records


# ---------------------------------------------------------------------------------------
# The loop shared by every stage: checkpoints, resume, metrics, progress, divergence.


# ---------------------------------------------------------------------------------------
# SFT.


def run_sft(cfg: Config, resume: bool = False, stop_after: int | None = None) -> dict:
    """Supervised fine-tuning on paths.train_data: each record's `response`, else its gold
    response (`gold_response`, else label + `rationale`, else the label alone, as the rule
    book in force writes it: agrl.task.format.gold_text)."""
    cfg = resolve_paths(cfg, "sft")
    cfg, book, records = load_task_data(cfg)
    tok, order = load_tokenizer(cfg.paths.tokenizer), cfg.train.response_order
    check_vocab(cfg, tok)
    texts = [r.get("response") or gold_text(r, order, book) for r in records]
    n_own = sum(bool(r.get("response")) for r in records)
    say(f"sft: targets: {n_own} `response` fields, {len(records) - n_own} gold responses")
    arrays_np = _supervised_arrays(cfg, tok, records, texts)
    _checked_eval_records(cfg, tok)
    key = jax.random.key(cfg.train.seed)
    params, cfg = load_policy(cfg, key)
    optimizer = make_optimizer(
        optim_with(cfg.sft.lr, cfg.sft.warmup_frac, cfg.optim), cfg.sft.steps
    )
    sft_step = make_sft_step(cfg.model, optimizer, memory=cfg.memory)
    names = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")

    def step(state, idx):
        return sft_step(state, dict(zip(names, (a[idx] for a in arrays_np), strict=True)))

    bs = min(cfg.sft.batch_size, len(records))
    if bs < cfg.sft.batch_size:
        say(f"sft: batch size {bs}: sft.batch_size={cfg.sft.batch_size} > {len(records)} records")
    return _run_supervised(
        cfg, tok, "sft", cfg.sft.steps, params, optimizer, len(records), bs, step, resume,
        stop_after,
    )  # fmt: skip


def _run_supervised(
    cfg: Config, tok, desc: str, total_steps: int, params, optimizer, n_examples: int,
    batch_size: int, step, resume: bool, stop_after: int | None, post=None,
) -> dict:  # fmt: skip
    """The SFT / DPO loop: shuffled batches of example indices fed to step(state, idx),
    with checkpoints, resume, metrics and the final export + evaluation."""
    run = Run(cfg, Path(cfg.paths.out), total_steps, max(1, cfg.train.ckpt_every), desc)
    batches = BatchSampler(n_examples, cfg.train.seed)
    kd = key_data(jax.random.key(cfg.train.seed))
    arrays = {"train": init_train_state(params, optimizer), "key": kd}
    arrays, host = run.restore(arrays, resume)
    step0 = 0 if host is None else int(host["step"])
    if host is not None:
        batches.load_state_dict(host["batches"])
    state = arrays["train"]
    # step0 is 0 without a checkpoint: a run killed before its first one starts afresh
    logger = MetricsLogger(run.out, resume_step=step0, enabled=is_main_process())

    def body(i):
        nonlocal state
        idx, _ = batches.next(batch_size, None, 0.0, 0.0)
        state, m = step(state, idx)
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        return m if post is None else post(m)

    def save(i):
        run.ckpt.save(i, {"train": state, "key": arrays["key"]},
                      {"step": i, "batches": batches.state_dict()})  # fmt: skip

    run.loop(step0, stop_after, body, save, logger)
    logger.close()
    return finish_run(run, state.params, cfg, tok, stop_after, step0)


# ---------------------------------------------------------------------------------------
# DPO: pass@N pair mining, then the DPO loss against the frozen start policy.


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


def run_dpo(cfg: Config, resume: bool = False, stop_after: int | None = None) -> dict:
    """DPO from paths.init against itself as the frozen reference (SPEC 6)."""
    cfg = resolve_paths(cfg, "dpo")
    out, tok = Path(cfg.paths.out), load_tokenizer(cfg.paths.tokenizer)
    check_vocab(cfg, tok)
    cfg, _, records = load_task_data(cfg)  # also on resume: the same rule book
    _checked_eval_records(cfg, tok)
    cached = load_pair_cache(out)
    if cached is None:  # the prompts to mine, checked before any compile
        if cfg.dpo.mine_prompts:
            rng = np.random.default_rng(cfg.train.seed)
            pick = rng.permutation(len(records))[: cfg.dpo.mine_prompts]
            records = [records[i] for i in sorted(pick)]
        prompts = encode_prompts(tok, records, cfg.train.response_order)
        check_lengths(cfg, cfg.paths.train_data, records, prompts)
    key = jax.random.key(cfg.train.seed)
    params, cfg = load_policy(cfg, key)
    ref_params = frozen_copy(load_reference(cfg, params))
    if cached is not None:
        pairs, stats = cached
    else:
        mined = mine_pairs(params, cfg, tok, records, jax.random.fold_in(key, 1))
        pairs, stats = mined["arrays"], mined["stats"]
        save_pair_cache(out, pairs, stats)
    optimizer = make_optimizer(
        optim_with(cfg.dpo.lr, cfg.dpo.warmup_frac, cfg.optim), cfg.dpo.steps
    )
    dpo_step = make_dpo_step(cfg.model, cfg.loss, optimizer, memory=cfg.memory)
    bs = min(cfg.dpo.batch_size, len(pairs["prompt_ids"]))

    def step(state, idx):
        return dpo_step(state, ref_params, {k: v[idx] for k, v in pairs.items()})

    def post(m):
        m["reward_accuracy"] = m.pop("accuracy_sum") / bs
        m["margin"] = m.pop("margin_sum") / bs
        return m

    summary = _run_supervised(
        cfg, tok, "dpo", cfg.dpo.steps, params, optimizer, len(pairs["prompt_ids"]), bs, step,
        resume, stop_after, post,
    )  # fmt: skip
    summary["mining"] = stats
    return summary


# ---------------------------------------------------------------------------------------
# RL: GRPO / GRPO-PR / AGRL and the ablations (the method preset is applied by the caller).


def run_rl(cfg: Config, resume: bool = False, stop_after: int | None = None) -> dict:
    """RL from paths.init with the reference paths.ref (default: the start policy)."""
    cfg = resolve_paths(cfg, "rl")
    tok = load_tokenizer(cfg.paths.tokenizer)
    check_vocab(cfg, tok)
    _checked_eval_records(cfg, tok)  # before prepare_rl compiles anything
    rl = prepare_rl(cfg, tokenizer=tok)
    cfg, out = rl.cfg, Path(rl.cfg.paths.out)
    run = Run(cfg, out, cfg.train.steps, max(1, cfg.train.ckpt_every), f"rl:{cfg.train.method}")
    arrays, host = run.restore(rl.arrays(), resume)
    step0 = 0 if host is None else int(host["step"])
    evals: list[dict] = [] if host is None else list(host["evals"])
    if host is not None:
        rl.load(arrays, host)
    evals_on = eval_records(cfg)  # with the rule book prepare_rl resolved
    watch = ZeroVarianceWatch(cfg.train.zero_variance_warn_steps)
    logger = MetricsLogger(out, resume_step=step0, enabled=is_main_process())

    def maybe_eval(step: int, params) -> dict:
        if not evals_on or cfg.train.eval_every <= 0 or step % cfg.train.eval_every:
            return {}
        if jax.process_count() > 1:  # every process evaluates a local copy (no collectives)
            params = local_copy(tree_to_host(params))
        m, _ = evaluate_policy(params, cfg, tok, evals_on)
        row = {"step": step, "macro_f1": m["macro_f1"], "accuracy": m["accuracy"]}
        if "accuracy_by_type" in m:
            row["accuracy_by_type"] = m["accuracy_by_type"]
        evals.append(row)
        return {"eval/macro_f1": m["macro_f1"], "eval/accuracy": m["accuracy"]}

    def body(step):
        t = time.perf_counter()
        ev = maybe_eval(step, rl.state.params)
        m, _ = rl.step(step)
        watch.update(step, m)
        m.update(ev, time_eval=time.perf_counter() - t - m["time_iteration"])
        return m

    def save(step):
        host = {"step": step, "batches": rl.batches.state_dict(), "evals": evals}
        run.ckpt.save(step, rl.arrays(), host)

    run.loop(step0, stop_after, body, save, logger)
    logger.close()
    summary = finish_run(run, rl.state.params, cfg, tok, stop_after, step0)
    if summary["complete"] and summary.get("eval"):
        evals.append({"step": cfg.train.steps, "macro_f1": summary["eval"]["macro_f1"],
                      "accuracy": summary["eval"]["accuracy"]})  # fmt: skip
    if is_main_process():
        (out / "evals.json").write_text(json.dumps(evals, indent=2, default=float))
    summary["evals"] = evals
    return summary
