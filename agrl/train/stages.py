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

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from agrl.config import Config, ConfigError
from agrl.eval.policy_eval import evaluate_policy, record_metrics
from agrl.model.params import place_params
from agrl.parallel.distributed import (
    is_main_process,
    load_on_host,
    local_copy,
    put_rows,
    tree_to_host,
)
from agrl.parallel.sharding import data_parallel_size, make_mesh
from agrl.rl.loss import verdict_readout
from agrl.task.data import encode_prompts, encode_responses, pad_left, pad_right
from agrl.task.format import gold_text, parse_batch
from agrl.task.rules import load_rule_book
from agrl.task.tokenizer import label_token_ids, load_tokenizer
from agrl.train.loop import (
    Run,
    RunError,
    ZeroVarianceWatch,
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
from agrl.train.pairs import load_pair_cache, mine_pairs, save_pair_cache
from agrl.train.preflight import check_lengths, check_vocab
from agrl.train.rl_run import prepare_rl
from agrl.train.rollout import BatchSampler
from agrl.train.steps import (
    init_sharded_train_state,
    make_dpo_step,
    make_optimizer,
    make_sft_step,
)

# ---------------------------------------------------------------------------------------
# Paths, data and models.


def _supervised_arrays(cfg: Config, tok, records, texts):
    """Padded SFT arrays, after the pre-flight length checks of the train split: prompts
    left-padded to the longest prompt, responses right-padded to the longest response (not
    to sampling.max_new_tokens: positions past every response are pure padding)."""
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
    return (*pad_left(prompts, P, pad), *pad_right(responses, max(map(len, responses)), pad))


def _checked_eval_records(cfg: Config, tok) -> list[dict]:
    """The evaluation split (eval_records), checked before any compile: it is sampled."""
    records = eval_records(cfg)
    if records:
        prompts = encode_prompts(tok, records, cfg.train.response_order)
        check_lengths(cfg, cfg.paths.eval_data, records, prompts)
    return records


# ---------------------------------------------------------------------------------------
# Learning curves: periodic greedy evaluations into evals.json (SFT and RL).


class Curve:
    """Evaluations every `every` steps on the first train.eval_curve_size eval records
    (0: train.eval_size), one `_eval_row` per point; `rows` is checkpointed with the run."""

    def __init__(self, cfg: Config, tok, every: int, rows: list[dict], always: bool = False):
        """always: the final evaluation is a point and evals.json is written even when
        every = 0 (RL); otherwise only a run with a curve writes one (SFT / DPO)."""
        self.cfg, self.tok, self.every, self.rows = cfg, tok, every, rows
        self.always = always
        self.final_on = eval_records(cfg)
        self.on = self.final_on[: cfg.train.eval_curve_size or None]

    def maybe(self, step: int, params) -> dict:
        """A point at every `every`-th step: its metrics for metrics.jsonl, else {}."""
        if not self.on or self.every <= 0 or step % self.every:
            return {}
        if jax.process_count() > 1:  # every process evaluates a local copy (no collectives)
            params = local_copy(tree_to_host(params))
        m, _ = evaluate_policy(params, self.cfg, self.tok, self.on)
        self.rows.append(_eval_row(step, m))
        return {"eval/macro_f1": m["macro_f1"], "eval/accuracy": m["accuracy"]}

    def finish(self, out: Path, summary: dict, steps: int) -> None:
        """The last point, then evals.json. The final evaluation covers the curve's records
        first (greedy decoding, the same batches), so the point is its per-record labels
        restricted to those records: nothing is decoded twice."""
        drawn = self.always or self.every > 0
        final = summary.get("eval")
        if summary["complete"] and final and drawn:
            if len(self.on) == len(self.final_on):
                self.rows.append(_eval_row(steps, final))
            else:
                labels = np.asarray(final["predictions"]["pred_label"][: len(self.on)])
                m = record_metrics(self.on, labels, load_rule_book(self.cfg.task.rule_book))
                self.rows.append(_eval_row(steps, m))
        if is_main_process() and drawn:
            (out / "evals.json").write_text(json.dumps(self.rows, indent=2, default=float))
        summary["evals"] = self.rows


# ---------------------------------------------------------------------------------------
# SFT.


def run_sft(cfg: Config, resume: bool = False, stop_after: int | None = None) -> dict:
    """Supervised fine-tuning on paths.train_data: each record's `response`, else its gold
    response (`gold_response`, else label + `rationale`, else the label alone, as the rule
    book in force writes it: agrl.task.format.gold_text)."""
    for name, value, off in (
        ("label_weight", cfg.sft.label_weight, 1.0),
        ("label_noise", cfg.sft.label_noise, 0.0),
        ("verdict_weight", cfg.sft.verdict_weight, 0.0),
    ):
        if value != off and cfg.train.response_order != "label_first":
            raise ConfigError(
                f"sft.{name}={value}: acts on the first response token, the label in "
                f"label-first order; train.response_order={cfg.train.response_order!r}"
            )
    cfg = resolve_paths(cfg, "sft")
    cfg, book, records = load_task_data(cfg)
    tok, order = load_tokenizer(cfg.paths.tokenizer), cfg.train.response_order
    check_vocab(cfg, tok)
    texts = [r.get("response") or gold_text(r, order, book) for r in records]
    n_own = sum(bool(r.get("response")) for r in records)
    say(f"sft: targets: {n_own} `response` fields, {len(records) - n_own} gold responses")
    arrays_np = _supervised_arrays(cfg, tok, records, texts)
    _checked_eval_records(cfg, tok)
    params, cfg, mesh = _placed_policy(cfg)
    optimizer = make_optimizer(
        optim_with(cfg.sft.lr, cfg.sft.warmup_frac, cfg.optim, cfg.sft.weight_decay),
        cfg.sft.steps,
    )
    bs = min(cfg.sft.batch_size, len(records))
    if bs < cfg.sft.batch_size:
        say(f"sft: batch size {bs}: sft.batch_size={cfg.sft.batch_size} > {len(records)} records")
    _say_rows("sft", bs, mesh)
    noise, vw = cfg.sft.label_noise, cfg.sft.verdict_weight
    readout = None
    names = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
    arrays = dict(zip(names, arrays_np, strict=True))
    if vw > 0:
        arrays["verdicts"] = _verdict_targets(cfg, book, texts)
        readout = verdict_readout(
            cfg.model.hidden_size, book.R, len(book.code_names), cfg.train.seed
        )
    sft_step = make_sft_step(
        cfg.model, optimizer, mesh, cfg.memory, batch_rows=bs, label_weight=cfg.sft.label_weight,
        label_noise=noise, label_ids=label_token_ids(tok) if noise else None, seed=cfg.train.seed,
        verdict_weight=vw, readout=readout,
    )  # fmt: skip

    def step(state, idx):
        return sft_step(state, {k: put_rows(a[idx], mesh) for k, a in arrays.items()})

    def post(m):  # the auxiliary loss as a mean over stated verdicts
        if vw > 0:
            m["verdict_nll"] = m.pop("verdict_nll_sum") / max(m.pop("verdict_count"), 1.0)
        return m

    return _run_supervised(
        cfg, tok, "sft", cfg.sft.steps, params, optimizer, mesh, len(records), bs, step,
        resume, stop_after, post, eval_every=cfg.sft.eval_every,
        ckpt_every=cfg.sft.ckpt_every,
    )  # fmt: skip


def _verdict_targets(cfg: Config, book, texts: list[str]) -> np.ndarray:
    """Verdict codes [N, R] int32 that each SFT target response states (-1: none), for
    `sft.verdict_weight`: read from the text being trained on, so the teacher's responses
    give the teacher's verdicts, never the world's gold ones."""
    if not book.has_rules:
        raise ConfigError(
            f"sft.verdict_weight={cfg.sft.verdict_weight}: {book.describe()}; the auxiliary "
            "verdict loss needs verdict dimensions"
        )
    _, verdicts, _ = parse_batch(texts, cfg.train.response_order, book)
    stated = (verdicts >= 0).all(axis=1)
    if not (verdicts >= 0).any():
        raise RunError(
            f"{cfg.paths.train_data}: sft.verdict_weight={cfg.sft.verdict_weight}: no target "
            "response states any verdict (label-only responses); set it to 0"
        )
    say(f"sft: verdict loss: {int(stated.sum())} of {len(texts)} targets state every verdict")
    return verdicts


def _placed_policy(cfg: Config) -> tuple[Any, Config, Mesh]:
    """(params on the mesh, cfg, mesh): the policy of paths.init (or a random init) read on
    the host CPU, then placed on cfg.mesh by the rules table (each device receives only its
    shards, as in RL)."""
    with load_on_host():
        params, cfg = load_policy(cfg, jax.random.key(cfg.train.seed))
    mesh = make_mesh(cfg.mesh)
    return place_params(params, cfg.model, mesh), cfg, mesh


def _say_rows(desc: str, rows: int, mesh: Mesh) -> None:
    """One start-up line when a batch cannot be split over the data-parallel devices."""
    dp = data_parallel_size(mesh)
    if rows % dp:
        say(
            f"{desc}: a batch of {rows} rows is not divisible by the data-parallel size {dp} "
            f"(mesh.data x mesh.fsdp): every device computes the whole batch; a multiple of "
            f"{dp} splits it"
        )


def _run_supervised(
    cfg: Config, tok, desc: str, total_steps: int, params, optimizer, mesh: Mesh,
    n_examples: int, batch_size: int, step, resume: bool, stop_after: int | None, post=None,
    eval_every: int = 0, ckpt_every: int = 0,
) -> dict:  # fmt: skip
    """The SFT / DPO loop: shuffled batches of example indices fed to step(state, idx),
    with a checkpoint every `ckpt_every` steps (0: train.ckpt_every), resume, metrics, a
    learning curve every `eval_every` steps and the final export + evaluation.  params:
    placed on `mesh` (donated with the train state, whose optimizer moments are created on
    their shards); every process draws the same indices and puts only its own rows."""
    every = ckpt_every or cfg.train.ckpt_every
    run = Run(cfg, Path(cfg.paths.out), total_steps, max(1, every), desc)
    batches = BatchSampler(n_examples, cfg.train.seed)
    kd = key_data(jax.random.key(cfg.train.seed))
    arrays = {"train": init_sharded_train_state(params, cfg.model, optimizer, mesh), "key": kd}
    arrays, host = run.restore(arrays, resume)
    step0 = 0 if host is None else int(host["step"])
    if host is not None:
        batches.load_state_dict(host["batches"])
    state = arrays["train"]
    curve = Curve(cfg, tok, eval_every, [] if host is None else list(host.get("evals", [])))
    # step0 is 0 without a checkpoint: a run killed before its first one starts afresh
    logger = MetricsLogger(run.out, resume_step=step0, enabled=is_main_process())

    def body(i):
        nonlocal state
        ev = curve.maybe(i, state.params)
        idx, _ = batches.next(batch_size, None, 0.0, 0.0)
        state, m = step(state, idx)
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        return {**(m if post is None else post(m)), **ev}

    def save(i):
        host = {"step": i, "batches": batches.state_dict(), "evals": curve.rows}
        run.ckpt.save(i, {"train": state, "key": arrays["key"]}, host)

    run.loop(step0, stop_after, body, save, logger)
    logger.close()
    summary = finish_run(run, state.params, cfg, tok, stop_after, step0)
    curve.finish(run.out, summary, total_steps)
    return summary


# ---------------------------------------------------------------------------------------
# DPO: pass@N pairs (agrl.train.pairs), then the DPO loss against the frozen start policy.


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
    with load_on_host():
        host, cfg = load_policy(cfg, key)
        ref_host = frozen_copy(load_reference(cfg, host))
    mesh = make_mesh(cfg.mesh)
    params = place_params(host, cfg.model, mesh)
    ref_params = place_params(ref_host, cfg.model, mesh)  # fresh buffers: never donated
    if cached is not None:
        pairs, stats = cached
    else:
        # Several processes: each mines every prompt on a local copy (the same pairs, with
        # no collectives); one process writes the cache.
        policy = params if jax.process_count() == 1 else local_copy(host)
        mined = mine_pairs(policy, cfg, tok, records, jax.random.fold_in(key, 1))
        pairs, stats = mined["arrays"], mined["stats"]
        if is_main_process():
            save_pair_cache(out, pairs, stats)
    del host
    optimizer = make_optimizer(
        optim_with(cfg.dpo.lr, cfg.dpo.warmup_frac, cfg.optim), cfg.dpo.steps
    )
    bs = min(cfg.dpo.batch_size, len(pairs["prompt_ids"]))
    _say_rows("dpo", bs, mesh)
    dpo_step = make_dpo_step(cfg.model, cfg.loss, optimizer, mesh, cfg.memory, batch_rows=bs)

    def step(state, idx):
        return dpo_step(state, ref_params, {k: put_rows(v[idx], mesh) for k, v in pairs.items()})

    def post(m):
        m["reward_accuracy"] = m.pop("accuracy_sum") / bs
        m["margin"] = m.pop("margin_sum") / bs
        return m

    summary = _run_supervised(
        cfg, tok, "dpo", cfg.dpo.steps, params, optimizer, mesh, len(pairs["prompt_ids"]), bs,
        step, resume, stop_after, post,
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
    curve = Curve(cfg, tok, cfg.train.eval_every, evals, always=True)  # prepare_rl's book
    watch = ZeroVarianceWatch(cfg.train.zero_variance_warn_steps)
    logger = MetricsLogger(out, resume_step=step0, enabled=is_main_process())

    def body(step):
        t = time.perf_counter()
        ev = curve.maybe(step, rl.state.params)
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
    curve.finish(out, summary, cfg.train.steps)
    return summary


def _eval_row(step: int, m: dict) -> dict:
    """One row of evals.json: macro-F1, accuracy, accuracy per query type and, when the
    records carry the teacher's labels, accuracy where the teacher is wrong / right."""
    row = {"step": step, "macro_f1": m["macro_f1"], "accuracy": m["accuracy"]}
    if "accuracy_by_type" in m:
        row["accuracy_by_type"] = m["accuracy_by_type"]
    if "teacher_split" in m:
        for name in ("teacher_wrong", "teacher_right"):
            row[f"{name}_accuracy"] = m["teacher_split"][name]["accuracy"]
    return row
