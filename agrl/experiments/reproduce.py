"""`agrl reproduce`: the main job of SPEC 8 on the relevance world, sized for a CPU.

    world -> SFT (teacher responses) and oracle SFT (gold responses) -> DPO (pass@N pairs)
    -> diagnostics (pass@G of the DPO policy on the rl pool) -> RL with every method of
    METHODS from the same DPO start -> evaluation of every model on b_eval and w_eval
    -> results.json, results.md, fig1..fig3 PNGs, run.json

Every stage writes into its own directory under --out; a stage whose model/ and eval.json
exist is reused, an unfinished one resumes from its last checkpoint (agrl.train.stages). The
configuration is layered by agrl.config.build_config: agrl.experiments.setup.DEFAULTS
(CPU-sized), then QUICK with --quick, then a TOML file (--config), then `section.key=value`
overrides; `world.*` keys (a `[world]` table or `world.n_sft=...`) configure
agrl.world.config.WorldConfig; each method is `with_method(cfg, m)` of that one config.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np

from agrl.config import (
    Config,
    ConfigError,
    config_to_dict,
    method_preset,
    with_method,
)
from agrl.eval.metrics import write_json
from agrl.eval.policy_eval import evaluate_policy, pass_at_g
from agrl.experiments.report import (
    aggregate,
    headline,
    paired_comparisons,
    results_markdown,
    write_figures,
)
from agrl.experiments.schedule import Job, Progress, auto_workers, run_jobs, usable_cores
from agrl.experiments.setup import (
    METHODS,
    ROW_NAMES,
    ROWS,
    ReproducePlan,
    fmt_seconds,
    with_run,
)
from agrl.model import load_pretrained
from agrl.task.data import load_records
from agrl.task.tokenizer import load_tokenizer
from agrl.train.loop import RunError, check_writable
from agrl.train.stages import run_dpo, run_rl, run_sft
from agrl.world.splits import write_world

# ---------------------------------------------------------------------------------------
# Configuration.


# ---------------------------------------------------------------------------------------
# Progress, timing and provenance.


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("agrl", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
    }


def _run_config(plan: ReproducePlan) -> dict[str, Any]:
    return {
        "config": config_to_dict(plan.cfg),
        "world": dataclasses.asdict(plan.world),
        "diag_prompts": plan.diag_prompts,
        "methods": {m: method_preset(m) for m in METHODS},
        "quick": plan.quick,
    }


def _check_same_run(plan: ReproducePlan) -> dict[str, Any]:
    """The wall times of an earlier run in the same directory; refuses a different config."""
    path = plan.out / "run.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(_run_config(plan), default=str))
    if old.get("run_config") != new:
        raise RunError(
            f"{plan.out} holds a run with a different configuration (see {path}); "
            "use another --out or the same options"
        )
    return old.get("wall_seconds", {})


def _write_run_json(plan: ReproducePlan, wall: dict[str, Any], total: float, workers: int) -> None:

    write_json(
        plan.out / "run.json",
        {
            "command": " ".join(["agrl", *sys.argv[1:]]) if sys.argv else "agrl reproduce",
            "run_config": json.loads(json.dumps(_run_config(plan), default=str)),
            "seeds": list(plan.seeds),
            "versions": _versions(),
            "machine": _machine(),
            "workers": workers,
            "wall_seconds": wall,
            "total_seconds_this_invocation": round(total, 2),
        },
    )


# ---------------------------------------------------------------------------------------
# Stages.


def _done(run_dir: Path) -> bool:
    return (run_dir / "model" / "config.json").exists() and (run_dir / "eval.json").exists()


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _eval_records(cfg: Config, world_dir: Path, split: str) -> list[dict]:

    return load_records(world_dir / f"{split}.jsonl")[: cfg.train.eval_size]


def _policy(model_dir: Path, cfg: Config) -> tuple[Any, Config]:

    params, model_cfg = load_pretrained(model_dir)
    return params, dataclasses.replace(cfg, model=model_cfg)


@functools.cache
def _tokenizer(world_dir: Path):
    return load_tokenizer(world_dir / "tokenizer")


def _trained_stage(run_fn, cfg: Config, run_dir: Path, world_dir: Path) -> dict:
    """Train (or reuse / resume) one model, then evaluate it on w_eval as well.

    b_eval metrics are the run's own eval.json (greedy, the first train.eval_size records);
    w_eval metrics go to eval_w.json.  Returns {b_eval, w_eval, evals?, mining?}; once the
    stage has finished, a call only reads them back.
    """

    summary = {} if _done(run_dir) else run_fn(cfg, resume=True)
    if summary and not summary.get("complete", True):
        raise RunError(f"{run_dir}: the run stopped before its last step")
    w_path = run_dir / "eval_w.json"
    if not w_path.exists():
        params, pcfg = _policy(run_dir / "model", cfg)
        records = _eval_records(cfg, world_dir, "w_eval")
        metrics, _ = evaluate_policy(params, pcfg, _tokenizer(world_dir), records)
        write_json(w_path, metrics)
    out = {"b_eval": _load_json(run_dir / "eval.json"), "w_eval": _load_json(w_path)}
    if (run_dir / "evals.json").exists():
        out["evals"] = _load_json(run_dir / "evals.json")
    if (run_dir / "pairs.json").exists():
        out["mining"] = _load_json(run_dir / "pairs.json")
    return out


def _prepare_world(plan: ReproducePlan) -> Path:
    """Write the world once (splits, tokenizer) plus sft_gold.jsonl for the oracle SFT."""

    world_dir = plan.out / "world"
    gold_file = world_dir / "sft_gold.jsonl"
    if not (world_dir / "summary.json").exists() or not gold_file.exists():
        write_world(plan.world, world_dir)
        with open(world_dir / "sft.jsonl") as f, open(gold_file, "w") as g:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    rec["response"] = rec["gold_response"]
                    g.write(json.dumps(rec) + "\n")
    n_tok = len(load_tokenizer(world_dir / "tokenizer"))
    if plan.cfg.model.vocab_size < n_tok:
        raise ConfigError(
            f"model.vocab_size={plan.cfg.model.vocab_size}: smaller than the world "
            f"tokenizer's {n_tok} tokens; raise it"
        )
    return world_dir


def _diag_stage(plan: ReproducePlan, seed: int, world_dir: Path) -> dict:

    path = plan.out / f"seed{seed}" / "diagnostics.json"
    if path.exists():
        return _load_json(path)
    records = load_records(world_dir / "rl.jsonl")
    if plan.diag_prompts:
        pick = np.random.default_rng(seed).permutation(len(records))[: plan.diag_prompts]
        records = [records[i] for i in sorted(pick)]
    params, pcfg = _policy(plan.out / f"seed{seed}" / "dpo" / "model", plan.cfg)
    result = pass_at_g(params, pcfg, _tokenizer(world_dir), records, seed)
    write_json(path, result)
    return result


def _stage_costs(plan: ReproducePlan) -> list[tuple[str, float]]:
    """(stage name, rough cost in 'SFT steps') for the overall ETA."""
    c = plan.cfg
    evals = 2 * 0.05 * c.train.eval_size  # b_eval + w_eval, ~3 ms per greedy record
    curve = c.train.eval_curve_size or c.train.eval_size
    curves = 0.05 * curve * (c.train.steps // max(c.train.eval_every, 1))
    sft = float(c.sft.steps) + 20 + evals
    mine = c.dpo.mine_prompts * c.dpo.pass_n / 16
    costs = [("world", 10.0)]
    for s in plan.seeds:
        costs += [(f"seed{s}/sft", sft), (f"seed{s}/oracle", sft)]
        costs += [(f"seed{s}/dpo", 3.0 * c.dpo.steps + mine + 20 + evals)]
        costs += [(f"seed{s}/diagnostics", plan.diag_prompts * c.sampling.group_size / 16)]
        # ~0.03 s per prompt-step, the compile, the curve and final evaluations
        rl = c.train.steps * 0.45 * c.train.prompts_per_step + 250 + curves + evals
        costs += [(f"seed{s}/rl_{m}", rl) for m in METHODS]
    return costs


def _seed_jobs(plan: ReproducePlan, seed: int, world_dir: Path) -> list[Job]:
    """The stages of one seed: SFT and oracle SFT, DPO after SFT, then the diagnostics and
    every RL method after DPO. A finished stage (eval_w.json written) runs inline: it only
    reads its results back."""
    base, cfg, world = plan.out / f"seed{seed}", plan.cfg, str(world_dir)

    def job(name: str, fn, args: tuple, after: tuple[str, ...] = ()) -> Job:
        reused = (base / name / "eval_w.json").exists() or (
            name == "diagnostics" and (base / "diagnostics.json").exists()
        )
        after = tuple(f"seed{seed}/{a}" for a in after)
        return Job(f"seed{seed}/{name}", fn, args, after, inline=reused)

    def trained(name: str, run_fn, stage_cfg: Config, *after: str, **paths: str) -> Job:
        stage_cfg = with_run(stage_cfg, seed=seed, world=world, out=str(base / name), **paths)
        return job(name, _trained_stage, (run_fn, stage_cfg, base / name, world_dir), after)

    jobs = [
        trained("sft", run_sft, cfg),
        trained("oracle", run_sft, cfg, train_data=str(world_dir / "sft_gold.jsonl")),
        trained("dpo", run_dpo, cfg, "sft", init=str(base / "sft" / "model")),
        job("diagnostics", _diag_stage, (plan, seed, world_dir), ("dpo",)),
    ]
    dpo_model = str(base / "dpo" / "model")
    for m in METHODS:
        jobs.append(trained(f"rl_{m}", run_rl, with_method(cfg, m), "dpo", init=dpo_model))
    return jobs


def _seed_results(jobs: list[Job]) -> dict:
    """{models, diagnostics} of one seed's finished jobs, read back from their files."""
    out = {j.name.split("/", 1)[1]: j.fn(*j.args) for j in jobs}
    diag = out.pop("diagnostics")
    return {"models": {k.removeprefix("rl_"): v for k, v in out.items()}, "diagnostics": diag}


# ---------------------------------------------------------------------------------------
# The job.


def _without_predictions(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _without_predictions(v) for k, v in tree.items() if k != "predictions"}
    return tree


def use_compile_cache(directory: Path) -> str:
    """Keep compiled executables in `directory` (jax's persistent compilation cache), so
    that the stages of a run, which build fresh jitted functions of the same programs (the
    greedy evaluation sampler of every model, the RL sampler and log-prob pass of every
    method, SFT and oracle SFT), compile each program once, and a rerun compiles nothing.
    A cache the user already set (JAX_COMPILATION_CACHE_DIR) is kept. Returns the directory
    in use."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(directory)


def run_reproduce(plan: ReproducePlan) -> dict[str, Any]:
    """Run (or resume) every stage of the plan and write results.json, results.md, figures
    and run.json into plan.out.  Returns {results, paths}."""

    check_writable(plan.out)
    use_compile_cache(plan.out / "jax_cache")
    wall = dict(_check_same_run(plan))
    t0 = time.perf_counter()
    cores = len(usable_cores())
    workers = plan.workers or auto_workers(
        jax.default_backend(), jax.process_count(), cores, plan.quick
    )
    if workers > cores:
        raise ConfigError(f"--workers={workers}: more than the {cores} CPU cores usable here")
    progress = Progress(_stage_costs(plan), wall, workers)
    _write_run_json(plan, wall, 0.0, workers)
    progress.start("world")
    t = time.perf_counter()
    reused = (plan.out / "world" / "sft_gold.jsonl").exists()
    world_dir = _prepare_world(plan)
    progress.finish("world", time.perf_counter() - t, reused)
    jobs = {seed: _seed_jobs(plan, seed, world_dir) for seed in plan.seeds}
    if workers > 1:
        print(f"running up to {workers} stages side by side, each on its own CPU cores "
              "(--workers 1: one at a time)", flush=True)  # fmt: skip

    def finished(job: Job, seconds: float) -> None:
        progress.finish(job.name, seconds, job.inline)
        _write_run_json(plan, wall, time.perf_counter() - t0, workers)

    run_jobs(
        [j for seed in plan.seeds for j in jobs[seed]],
        workers,
        on_start=lambda job: progress.start(job.name, job.inline),
        on_finish=finished,
        init=functools.partial(use_compile_cache, plan.out / "jax_cache"),
    )
    per_seed = {seed: _seed_results(jobs[seed]) for seed in plan.seeds}
    agg = aggregate(per_seed)
    results = {
        "seeds": list(plan.seeds),
        "rows": {r: ROW_NAMES[r] for r in ROWS},
        "aggregate": agg,
        "agrl_vs_grpo": headline(per_seed),
        "vs_grpo": paired_comparisons(per_seed),
        # per-record predictions stay in each stage's eval.json / eval_w.json
        "per_seed": {str(s): _without_predictions(v) for s, v in per_seed.items()},
    }
    paths = [write_json(plan.out / "results.json", results)]
    md = plan.out / "results.md"
    md.write_text(results_markdown(plan, agg, per_seed, wall))
    agr_methods = [m for m in METHODS if with_method(plan.cfg, m).guidance.enabled]
    paths += [md, *write_figures(plan, per_seed, agg, agr_methods)]
    _write_run_json(plan, wall, time.perf_counter() - t0, workers)
    paths.append(plan.out / "run.json")
    print(
        f"done in {fmt_seconds(time.perf_counter() - t0)}; wrote "
        + ", ".join(p.name for p in paths)
    )
    return {"results": results, "paths": paths}
