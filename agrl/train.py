"""The training stages: SFT -> DPO (pass@N pair mining) -> RL, each a resumable run.

A run directory holds config.json, checkpoints/ (orbax, the WHOLE state: params, optimizer
state, step, PRNG key, data order and cursor, AGR replay table, evaluations so far),
metrics.jsonl + tb/ (TensorBoard), and at the end model/ (a Hugging Face directory with the
tokenizer) and eval.json. `resume=True` continues from the last complete checkpoint; the
resumed run equals the uninterrupted one bit for bit on CPU (tested).

The outer Python loop lives here and only composes jitted steps (agrl.train_step) and the
host RL iteration (agrl.rollout).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from agrl.checkpoint import CheckpointManager
from agrl.config import Config, OptimConfig, config_to_dict
from agrl.data import (
    encode_prompts,
    encode_responses,
    has_verdicts,
    load_records,
    pad_left,
    pad_right,
    verdict_array,
)
from agrl.distributed import (
    init_sharded_train_state,
    is_main_process,
    load_on_host,
    local_copy,
    tree_to_host,
)
from agrl.guidance import from_state_dict, init_replay, to_state_dict
from agrl.metrics_log import MetricsLogger
from agrl.model import init_params, load_pretrained, save_pretrained
from agrl.policy_eval import evaluate_policy, sample_correct
from agrl.rewards import fallback_message
from agrl.rollout import BatchSampler, PromptPool, make_rl_context, rl_iteration
from agrl.sampling import make_sampler
from agrl.sharding import make_mesh, place_params
from agrl.tokenizer import eos_ids, load_tokenizer
from agrl.train_step import (
    init_train_state,
    make_dpo_step,
    make_optimizer,
    make_sft_step,
)
from agrl.world.rules import R


class RunError(RuntimeError):
    """A user-facing problem with a run (paths, data, divergence); the CLI prints it."""


# ---------------------------------------------------------------------------------------
# Paths, data and models.


def resolve_paths(cfg: Config, stage: str) -> Config:
    """Fill default paths from paths.world and check them before any training starts."""
    p = cfg.paths
    world = Path(p.world) if p.world else None
    default_train = {"sft": "sft.jsonl", "dpo": "sft.jsonl", "rl": "rl.jsonl"}[stage]

    def pick(value: str, default: str) -> str:
        if value:
            return value
        if world is None:
            return ""
        return str(world / default)

    p = dataclasses.replace(
        p,
        tokenizer=pick(p.tokenizer, "tokenizer"),
        train_data=pick(p.train_data, default_train),
        eval_data=pick(p.eval_data, "b_eval.jsonl"),
        ref=p.ref or p.init,
    )
    if not p.out:
        raise RunError("paths.out is not set (use --out DIR)")
    for name in ("tokenizer", "train_data"):
        value = getattr(p, name)
        if not value:
            raise RunError(f"paths.{name} is not set (give --world DIR or paths.{name}=...)")
        if not Path(value).exists():
            raise RunError(f"paths.{name}={value}: not found")
    if stage != "sft" and not p.init:
        raise RunError(f"paths.init is not set: a {stage} run starts from a model (--init DIR)")
    for name in ("init", "ref", "eval_data"):
        value = getattr(p, name)
        if value and not Path(value).exists():
            raise RunError(f"paths.{name}={value}: not found")
    check_writable(Path(p.out))
    return dataclasses.replace(cfg, paths=p)


def check_writable(out: Path) -> None:
    """Fail early (before any compile or training) when the run directory is unusable."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".agrl_write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunError(f"output directory {out} is not writable: {e.strerror or e}") from None


def load_policy(cfg: Config, key: jax.Array) -> tuple[Any, Config]:
    """Params from paths.init (the model config then comes from that directory), or a
    random init of cfg.model when paths.init is empty."""
    if not cfg.paths.init:
        return init_params(cfg.model, key), cfg
    params, model_cfg = load_pretrained(cfg.paths.init)
    return params, dataclasses.replace(cfg, model=model_cfg)


def check_vocab(cfg: Config, tok) -> None:
    """The model must have a row for every token id the tokenizer can produce."""
    if cfg.model.vocab_size < len(tok):
        raise RunError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
            f"{len(tok)} tokens ({cfg.paths.tokenizer}); set model.vocab_size >= {len(tok)}"
        )


def build_pool(records: list[dict], tok, order: str) -> PromptPool:
    """Tokenised prompts and gold fields of a split (gold response = what AGR forces)."""
    prompts = [np.asarray(x, np.int32) for x in encode_prompts(tok, records, order)]
    gold_text = [r.get("gold_response", "") for r in records]
    gold = encode_responses(tok, gold_text)
    # The forced prefix never includes eos: guidance stops where the rationale ends.
    gold = [g[:-1] for g in gold]
    Lg = max(1, max(len(g) for g in gold))
    gold_ids, gold_mask = pad_right(gold, Lg, int(tok.pad_token_id))
    with_v = has_verdicts(records)
    verdicts = verdict_array(records) if with_v else np.full((len(records), R), -1, np.int32)
    return PromptPool(
        prompt_ids=tuple(prompts),
        gold_label=np.asarray([r["label"] for r in records], np.int32),
        gold_verdicts=verdicts,
        has_verdicts=np.full(len(records), with_v),
        gold_ids=gold_ids,
        gold_len=gold_mask.sum(-1).astype(np.int32),
        query_type=tuple(r.get("query_type", "") for r in records),
    )


def _supervised_arrays(tok, records, texts, order, T):
    prompts = encode_prompts(tok, records, order)
    responses = encode_responses(tok, texts)
    too_long = [i for i, r in enumerate(responses) if len(r) > T]
    if too_long:
        i = too_long[0]
        raise RunError(
            f"record {records[i]['id']}: response has {len(responses[i])} tokens > "
            f"sampling.max_new_tokens={T}; raise it or shorten the responses"
        )
    P = max(len(p) for p in prompts)
    pad = int(tok.pad_token_id)
    return (*pad_left(prompts, P, pad), *pad_right(responses, T, pad))


# ---------------------------------------------------------------------------------------
# The loop shared by every stage: checkpoints, resume, metrics, progress, divergence.


@dataclasses.dataclass
class Run:
    cfg: Config
    out: Path
    total_steps: int
    ckpt_every: int
    desc: str

    def __post_init__(self):
        self.ckpt = CheckpointManager(self.out / "checkpoints", keep=2)
        if is_main_process():  # multi-process: process 0 writes every run file
            (self.out / "config.json").write_text(json.dumps(config_to_dict(self.cfg), indent=2))

    def restore(self, arrays: Any, resume: bool) -> tuple[Any, dict | None]:
        """(arrays, host) restored from the latest checkpoint, or (arrays, None) for a new run.

        A new run refuses a directory that already holds checkpoints: mixing two runs'
        metrics and checkpoints would make a later --resume continue the wrong one."""
        latest = self.ckpt.latest_step()
        if not resume and latest is not None:
            raise RunError(
                f"{self.out} already holds a run (checkpoint at step {latest}); "
                "continue it with --resume or choose another --out"
            )
        if latest is None:
            return arrays, None
        return self.ckpt.restore(target=arrays)

    def loop(self, step0: int, stop_after: int | None, body, save, logger: MetricsLogger):
        """Run body(step) -> metrics for steps step0..total_steps-1, checkpointing via save(step)
        every ckpt_every steps and at the end; stop early after `stop_after` steps of this
        call (used by tests and by interrupted runs)."""
        last = self.total_steps if stop_after is None else min(self.total_steps, step0 + stop_after)
        nonfinite = 0
        bar = tqdm(
            total=self.total_steps,
            initial=step0,
            desc=self.desc,
            dynamic_ncols=True,
            disable=not is_main_process(),
        )
        try:
            for step in range(step0, last):
                metrics = body(step)
                nonfinite = nonfinite + 1 if metrics.get("skipped", 0.0) > 0 else 0
                metrics["nonfinite_streak"] = float(nonfinite)
                logger.log(step, metrics)
                bar.update(1)
                bar.set_postfix(
                    {k: f"{metrics[k]:.3g}" for k in ("loss", "reward") if k in metrics}
                )
                if nonfinite >= self.cfg.train.max_nonfinite:
                    save(step + 1)
                    raise RunError(
                        f"{nonfinite} consecutive non-finite losses or gradients at step {step}; "
                        f"stopped (checkpoint saved in {self.ckpt.directory}). Lower the "
                        "learning rate or check the data."
                    )
                if (step + 1) % self.ckpt_every == 0 or step + 1 == last:
                    save(step + 1)
        finally:
            bar.close()
        return last


def frozen_copy(params: Any) -> Any:
    """A host copy of params that the donated train state can never alias."""
    return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(params))


def _key_data(key: jax.Array) -> np.ndarray:
    return np.asarray(jax.random.key_data(key))


def _save_model(out: Path, params, cfg: Config, tok) -> Path:
    return save_pretrained(params, cfg.model, out / "model", tokenizer=tok)


def _optim(lr: float, warmup_frac: float, base: OptimConfig) -> OptimConfig:
    return dataclasses.replace(base, lr=lr, warmup_frac=warmup_frac)


def _eval_records(cfg: Config) -> list[dict]:
    if not cfg.paths.eval_data:
        return []
    return load_records(cfg.paths.eval_data)[: cfg.train.eval_size]


def _final_eval(out: Path, params, cfg: Config, tok, records) -> dict:
    if not records:
        return {}
    metrics, _ = evaluate_policy(params, cfg, tok, records)
    if is_main_process():
        (out / "eval.json").write_text(json.dumps(metrics, indent=2, default=float))
    return metrics


# ---------------------------------------------------------------------------------------
# SFT.


def run_sft(cfg: Config, resume: bool = False, stop_after: int | None = None) -> dict:
    """Supervised fine-tuning on the `response` field of paths.train_data."""
    cfg = resolve_paths(cfg, "sft")
    tok, order = load_tokenizer(cfg.paths.tokenizer), cfg.train.response_order
    records = load_records(cfg.paths.train_data)
    texts = [r.get("response") or r.get("gold_response") for r in records]
    if any(t is None for t in texts):
        raise RunError(f"{cfg.paths.train_data}: SFT needs a `response` on every record")
    arrays_np = _supervised_arrays(tok, records, texts, order, cfg.sampling.max_new_tokens)
    key = jax.random.key(cfg.train.seed)
    params, cfg = load_policy(cfg, key)
    check_vocab(cfg, tok)
    optimizer = make_optimizer(_optim(cfg.sft.lr, cfg.sft.warmup_frac, cfg.optim), cfg.sft.steps)
    sft_step = make_sft_step(cfg.model, optimizer)
    names = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")

    def step(state, idx):
        return sft_step(state, dict(zip(names, (a[idx] for a in arrays_np), strict=True)))

    return _run_supervised(
        cfg, tok, "sft", cfg.sft.steps, params, optimizer, len(records), cfg.sft.batch_size,
        step, resume, stop_after,
    )  # fmt: skip


def _run_supervised(
    cfg: Config, tok, desc: str, total_steps: int, params, optimizer, n_examples: int,
    batch_size: int, step, resume: bool, stop_after: int | None, post=None,
) -> dict:  # fmt: skip
    """The SFT / DPO loop: shuffled batches of example indices fed to step(state, idx),
    with checkpoints, resume, metrics and the final export + evaluation."""
    run = Run(cfg, Path(cfg.paths.out), total_steps, max(1, cfg.train.ckpt_every), desc)
    batches = BatchSampler(n_examples, cfg.train.seed)
    key_data = _key_data(jax.random.key(cfg.train.seed))
    arrays = {"train": init_train_state(params, optimizer), "key": key_data}
    arrays, host = run.restore(arrays, resume)
    step0 = 0 if host is None else int(host["step"])
    if host is not None:
        batches.load_state_dict(host["batches"])
    state = arrays["train"]
    logger = MetricsLogger(
        run.out, resume_step=None if host is None else step0, enabled=is_main_process()
    )

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
    return _finish(run, state.params, cfg, tok, stop_after, step0)


def _finish(run: Run, params, cfg: Config, tok, stop_after, step0) -> dict:
    done = stop_after is None or step0 + stop_after >= run.total_steps
    summary: dict[str, Any] = {"out": str(run.out), "complete": done}
    if done:
        host = tree_to_host(params)  # a collective when params span several processes
        summary["model"] = str(run.out / "model")
        if is_main_process():
            _save_model(run.out, host, cfg, tok)
        params = params if jax.process_count() == 1 else local_copy(host)
        summary["eval"] = _final_eval(run.out, params, cfg, tok, _eval_records(cfg))
    run.ckpt.close()
    return summary


# ---------------------------------------------------------------------------------------
# DPO: pass@N pair mining, then the DPO loss against the frozen start policy.


def mine_pairs(params, cfg: Config, tok, records: list[dict], key: jax.Array) -> dict:
    """pass@N pairs from the policy: per prompt, a correct sample is chosen and a wrong one
    rejected; when none is correct the gold response is chosen; prompts with no wrong
    sample give no pair.  Returns token arrays and mining statistics."""
    order, N = cfg.train.response_order, cfg.dpo.pass_n
    sampler = make_sampler(
        cfg.model,
        dataclasses.replace(cfg.sampling, temperature=cfg.dpo.temperature, top_k=0, top_p=1.0),
        eos_ids=tuple(eos_ids(tok)),
        pad_id=int(tok.pad_token_id),
        group_size=N,
    )
    prompts = encode_prompts(tok, records, order)
    gold = encode_responses(tok, [r["gold_response"] for r in records])
    chosen, rejected, keep, n_none_right = [], [], [], 0
    bs = max(1, 64 // N)
    for start in tqdm(range(0, len(records), bs), desc="dpo: mining pairs", dynamic_ncols=True):
        sl = slice(start, min(start + bs, len(records)))
        seqs = prompts[sl]
        ids, mask = pad_left(seqs, max(len(s) for s in seqs), int(tok.pad_token_id))
        gold_labels = np.asarray([r["label"] for r in records[sl]])
        k = jax.random.fold_in(key, start)
        toks, m, correct = sample_correct(sampler, params, tok, ids, mask, gold_labels, k, order)
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


def run_dpo(cfg: Config, resume: bool = False, stop_after: int | None = None) -> dict:
    """DPO from paths.init against itself as the frozen reference (SPEC 6)."""
    cfg = resolve_paths(cfg, "dpo")
    out, tok = Path(cfg.paths.out), load_tokenizer(cfg.paths.tokenizer)
    key = jax.random.key(cfg.train.seed)
    params, cfg = load_policy(cfg, key)
    check_vocab(cfg, tok)
    ref_params = params if cfg.paths.ref == cfg.paths.init else load_pretrained(cfg.paths.ref)[0]
    ref_params = frozen_copy(ref_params)
    pairs_file = out / "pairs.npz"
    if pairs_file.exists():
        with np.load(pairs_file) as f:
            pairs = {k: f[k] for k in f.files}
        stats = json.loads((out / "pairs.json").read_text())
    else:
        records = load_records(cfg.paths.train_data)
        if cfg.dpo.mine_prompts:
            rng = np.random.default_rng(cfg.train.seed)
            pick = rng.permutation(len(records))[: cfg.dpo.mine_prompts]
            records = [records[i] for i in sorted(pick)]
        if any("gold_response" not in r for r in records):
            raise RunError(f"{cfg.paths.train_data}: DPO mining needs `gold_response` fields")
        mined = mine_pairs(params, cfg, tok, records, jax.random.fold_in(key, 1))
        pairs, stats = mined["arrays"], mined["stats"]
        np.savez(pairs_file, **pairs)
        (out / "pairs.json").write_text(json.dumps(stats, indent=2))
    optimizer = make_optimizer(_optim(cfg.dpo.lr, cfg.dpo.warmup_frac, cfg.optim), cfg.dpo.steps)
    dpo_step = make_dpo_step(cfg.model, cfg.loss, optimizer)
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
    out, tok = Path(cfg.paths.out), load_tokenizer(cfg.paths.tokenizer)
    order = cfg.train.response_order
    records = load_records(cfg.paths.train_data)
    if cfg.guidance.enabled and any("gold_response" not in r for r in records):
        raise RunError(
            f"{cfg.paths.train_data}: guided replay (AGR) needs `gold_response` on every "
            "record; disable it with guidance.enabled=false"
        )
    pool = build_pool(records, tok, order)
    longest = max(len(p) for p in pool.prompt_ids)
    if longest > cfg.sampling.prompt_buckets[-1]:
        raise RunError(
            f"{cfg.paths.train_data}: a prompt has {longest} tokens, more than the largest "
            f"bucket sampling.prompt_buckets={cfg.sampling.prompt_buckets}; add a larger bucket"
        )
    message = fallback_message(pool.has_verdicts)
    if message:
        tqdm.write(message)
    key = jax.random.key(cfg.train.seed)
    with load_on_host():  # read on the host CPU; each device then receives only its shards
        params, cfg = load_policy(cfg, key)
        ref_params = (
            params if cfg.paths.ref == cfg.paths.init else load_pretrained(cfg.paths.ref)[0]
        )
    check_vocab(cfg, tok)
    optimizer = make_optimizer(cfg.optim, cfg.train.steps)
    mesh = make_mesh(cfg.mesh)  # policy, reference, optimizer state and batches follow it
    ref_params = place_params(ref_params, cfg.model, mesh)  # fresh buffers: never donated
    ctx = make_rl_context(cfg, pool, tok, optimizer, eos_ids(tok), mesh=mesh)
    run = Run(cfg, out, cfg.train.steps, max(1, cfg.train.ckpt_every), f"rl:{cfg.train.method}")
    batches = BatchSampler(len(pool), cfg.train.seed)
    replay = init_replay(len(pool))
    params = place_params(params, cfg.model, mesh)
    arrays = {
        "train": init_sharded_train_state(params, cfg.model, optimizer, mesh),
        "key": _key_data(key),
        "replay": to_state_dict(replay),
    }
    arrays, host = run.restore(arrays, resume)
    step0 = 0 if host is None else int(host["step"])
    evals: list[dict] = [] if host is None else list(host["evals"])
    if host is not None:
        batches.load_state_dict(host["batches"])
        replay = from_state_dict(arrays["replay"])
    state = arrays["train"]
    base_key = jax.random.wrap_key_data(arrays["key"])
    eval_records = _eval_records(cfg)
    logger = MetricsLogger(
        out, resume_step=step0 if host is not None else None, enabled=is_main_process()
    )

    def maybe_eval(step: int, params) -> dict:
        if not eval_records or cfg.train.eval_every <= 0 or step % cfg.train.eval_every:
            return {}
        if jax.process_count() > 1:  # every process evaluates a local copy (no collectives)
            params = local_copy(tree_to_host(params))
        m, _ = evaluate_policy(params, cfg, tok, eval_records)
        row = {"step": step, "macro_f1": m["macro_f1"], "accuracy": m["accuracy"]}
        if "accuracy_by_type" in m:
            row["accuracy_by_type"] = m["accuracy_by_type"]
        evals.append(row)
        return {"eval/macro_f1": m["macro_f1"], "eval/accuracy": m["accuracy"]}

    def body(step):
        nonlocal state, replay
        t = time.perf_counter()
        ev = maybe_eval(step, state.params)
        idx, n_replayed = batches.next(
            cfg.train.prompts_per_step,
            replay if cfg.guidance.enabled else None,
            cfg.guidance.p_replay,
            cfg.guidance.tau,
        )
        state, replay, m, _ = rl_iteration(
            ctx, state, ref_params, replay, idx, jax.random.fold_in(base_key, step), step
        )
        m.update(
            ev, replayed=float(n_replayed), time_eval=time.perf_counter() - t - m["time_iteration"]
        )
        return m

    def save(step):
        run.ckpt.save(
            step,
            {"train": state, "key": arrays["key"], "replay": to_state_dict(replay)},
            {"step": step, "batches": batches.state_dict(), "evals": evals},
        )

    run.loop(step0, stop_after, body, save, logger)
    logger.close()
    summary = _finish(run, state.params, cfg, tok, stop_after, step0)
    if summary["complete"] and summary.get("eval"):
        evals.append({"step": cfg.train.steps, "macro_f1": summary["eval"]["macro_f1"],
                      "accuracy": summary["eval"]["accuracy"]})  # fmt: skip
    if is_main_process():
        (out / "evals.json").write_text(json.dumps(evals, indent=2, default=float))
    summary["evals"] = evals
    return summary
