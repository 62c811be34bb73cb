"""The run machinery shared by every stage: paths and checks before any compile, the
resumable step loop (checkpoints, metrics, progress, divergence stop), final export + eval."""

from __future__ import annotations

import dataclasses
import json
import sys
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from agrl.config import Config, ConfigError, ModelConfig, OptimConfig, config_to_dict
from agrl.eval.policy_eval import evaluate_policy
from agrl.model import config_from_hf, init_params, load_pretrained
from agrl.parallel.distributed import is_main_process, local_copy, tree_to_host
from agrl.task.data import has_supervision, load_records
from agrl.task.format import check_order
from agrl.task.rules import RuleBook, load_rule_book
from agrl.task.tokenizer import TOKENIZER_FILES, has_tokenizer_files
from agrl.train.checkpoint import CheckpointManager
from agrl.train.export import export_model
from agrl.train.metrics_log import MetricsLogger


class RunError(RuntimeError):
    """A user-facing problem with a run (paths, data, divergence); the CLI prints it."""


def resolve_paths(cfg: Config, stage: str) -> Config:
    """Fill default paths from paths.world and check them before any training starts; the
    model config then comes from paths.init (`resolve_model`). The tokenizer is
    paths.tokenizer, else the --init model's own (when its directory has tokenizer files),
    else <world>/tokenizer; a start-up line says which."""
    p = cfg.paths
    world = Path(p.world) if p.world else None
    default_train = {"sft": "sft.jsonl", "dpo": "sft.jsonl", "rl": "rl.jsonl"}[stage]

    def pick(value: str, default: str) -> str:
        if value:
            return value
        if world is None:
            return ""
        return str(world / default)

    init_tok = p.init if p.init and has_tokenizer_files(p.init) else ""
    source = "paths.tokenizer" if p.tokenizer else "the --init model's" if init_tok else "--world"
    p = dataclasses.replace(
        p,
        tokenizer=p.tokenizer or init_tok or pick("", "tokenizer"),
        train_data=pick(p.train_data, default_train),
        eval_data=pick(p.eval_data, "b_eval.jsonl"),
        ref=p.ref or p.init,
    )
    if not p.out:
        raise RunError("paths.out is not set (use --out DIR)")
    if not p.tokenizer and p.init and Path(p.init).is_dir():
        raise RunError(
            f"paths.tokenizer is not set and the --init model {p.init} has no tokenizer "
            f"files (none of {', '.join(TOKENIZER_FILES)}); give --world DIR or "
            "paths.tokenizer=DIR"
        )
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
    cfg = resolve_model(dataclasses.replace(cfg, paths=p))
    if is_main_process():
        tqdm.write(f"tokenizer: {cfg.paths.tokenizer} ({source})")
    return cfg


# Model fields that are runtime choices, not architecture: given with --init they replace
# the checkpoint's values (e.g. bfloat16 compute on an accelerator, float32 on a CPU).
RUNTIME_MODEL_FIELDS: tuple[str, ...] = ("param_dtype", "compute_dtype", "max_position_embeddings")


def init_model_config(
    current: ModelConfig, ckpt: ModelConfig, init: str, given: Collection[str] | None = None
) -> ModelConfig:
    """The model config of a run that starts from the checkpoint `init` (whose config.json
    gives `ckpt`): the checkpoint's architecture with the runtime choices
    (RUNTIME_MODEL_FIELDS) of `current` that were given; an architecture field given with a
    value the checkpoint does not have is a ConfigError. param_dtype, when not given, is
    float32 (an f32 master copy; compute_dtype stays the checkpoint's).

    given: the model fields the user set (the CLI knows them). None (API callers): when
    `current` has the checkpoint's architecture it describes this checkpoint and all its
    runtime choices stand; otherwise the fields that differ from ModelConfig's defaults
    count as given.
    """
    names = [f.name for f in dataclasses.fields(ModelConfig)]
    arch = [n for n in names if n not in RUNTIME_MODEL_FIELDS]
    if given is None:
        if all(getattr(current, n) == getattr(ckpt, n) for n in arch):
            given = RUNTIME_MODEL_FIELDS
        else:
            default = ModelConfig()
            given = [n for n in names if getattr(current, n) != getattr(default, n)]
    bad = [n for n in arch if n in given and getattr(current, n) != getattr(ckpt, n)]
    if bad:
        said = ", ".join(
            f"model.{n}={getattr(current, n)!r} (the checkpoint has {getattr(ckpt, n)!r})"
            for n in bad
        )
        raise ConfigError(
            f"{said}: contradicts the architecture of --init {init}; drop the override "
            "(with --init the architecture comes from the checkpoint; only "
            f"{', '.join('model.' + n for n in RUNTIME_MODEL_FIELDS)} may be set)"
        )
    runtime = {n: getattr(current, n) for n in RUNTIME_MODEL_FIELDS if n in given}
    # Training keeps an f32 master copy of the weights unless told otherwise: Adam's updates
    # (lr x ~1) are far below bf16's resolution of a weight (2^-8 relative), so bf16 params
    # would silently not move. Compute stays in the checkpoint's dtype.
    runtime.setdefault("param_dtype", "float32")
    return dataclasses.replace(ckpt, **runtime)


def resolve_model(cfg: Config, given: Collection[str] | None = None) -> Config:
    """cfg with the model of paths.init (`init_model_config`; reads config.json only), or
    cfg itself without paths.init. Idempotent."""
    if not cfg.paths.init:
        return cfg
    ckpt = config_from_hf(cfg.paths.init)
    return dataclasses.replace(cfg, model=init_model_config(cfg.model, ckpt, cfg.paths.init, given))


def check_writable(out: Path) -> None:
    """Fail early (before any compile or training) when the run directory is unusable."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        # a name of its own: the processes of a multi-process run probe the same directory
        # at the same time, and a shared name let one unlink the other's probe
        probe = out / f".agrl_write_probe.{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunError(f"output directory {out} is not writable: {e.strerror or e}") from None


def load_policy(cfg: Config, key: jax.Array) -> tuple[Any, Config]:
    """Params from paths.init (the model config then comes from that directory), or a
    random init of cfg.model when paths.init is empty."""
    if not cfg.paths.init:
        return init_params(cfg.model, key), cfg
    cfg = resolve_model(cfg)
    params, _ = load_pretrained(cfg.paths.init, param_dtype=cfg.model.param_dtype)
    return params, cfg


def load_reference(cfg: Config, params) -> Any:
    """The reference policy: `params` when paths.ref is paths.init, else paths.ref's
    weights in the policy's param_dtype."""
    if cfg.paths.ref == cfg.paths.init:
        return params
    return load_pretrained(cfg.paths.ref, param_dtype=cfg.model.param_dtype)[0]


# The stage a worker process of `agrl reproduce` runs (agrl.experiments.schedule): it
# names the progress bar and prefixes the start-up lines, and its slot gives the bar its
# own terminal line, so that stages running side by side stay readable.
_STAGE: dict[str, Any] = {"label": "", "slot": None}


def set_stage_label(label: str, slot: int | None) -> None:
    _STAGE.update(label=label, slot=slot)


def say(line: str) -> None:
    """A start-up line (process 0 only), above any progress bar."""
    if is_main_process():
        tqdm.write(f"[{_STAGE['label']}] {line}" if _STAGE["label"] else line)


def resolve_task(cfg: Config, records: list[dict]) -> tuple[Config, RuleBook]:
    """The rule book in force for a run on `records` (validated with it by load_task_data).

    When the book has verdict dimensions but no record carries verdicts, a rationale, a
    response or a gold response, nothing could teach them: the run switches to the
    label-only book and says so (the returned cfg records the switch in config.json).
    """
    book = load_rule_book(cfg.task.rule_book)
    if book.has_rules and not has_supervision(records):
        say(
            f"task: no record of {cfg.paths.train_data} has verdicts, a rationale or a "
            f"response; the rule book {book.name!r} cannot be learned from labels alone, "
            "so this run uses task.rule_book=label_only"
        )
        task = dataclasses.replace(cfg.task, rule_book="label_only")
        cfg = dataclasses.replace(cfg, task=task)
        book = load_rule_book("label_only")
    try:
        check_order(book, cfg.train.response_order)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    say(f"task: {book.describe()}")
    return cfg, book


def load_task_data(cfg: Config) -> tuple[Config, RuleBook, list[dict]]:
    """paths.train_data validated with the configured rule book, then `resolve_task`."""
    records = load_records(cfg.paths.train_data, load_rule_book(cfg.task.rule_book))
    cfg, book = resolve_task(cfg, records)
    return cfg, book, records


class ZeroVarianceWatch:
    """Warns once (stderr) when every group had zero reward variance (so no policy
    gradient) for `limit` consecutive RL steps; limit 0 never warns."""

    def __init__(self, limit: int):
        self.limit, self.streak, self.warned = limit, 0, False

    def update(self, step: int, metrics: dict[str, float]) -> None:
        all_flat = metrics.get("zero_variance_frac_mixed", 0.0) >= 1.0
        self.streak = self.streak + 1 if all_flat else 0
        if self.limit and self.streak >= self.limit and not self.warned:
            self.warned = True
            if is_main_process():
                print(
                    f"agrl: WARNING: at step {step} every group has had zero reward variance "
                    f"for {self.streak} consecutive steps: no policy gradient, the model is "
                    "not learning (check the rewards, the data labels and the rule book, or "
                    "raise sampling.temperature)",
                    file=sys.stderr,
                    flush=True,
                )


@dataclasses.dataclass
class Run:
    cfg: Config
    out: Path
    total_steps: int
    ckpt_every: int
    desc: str

    def __post_init__(self):
        self.ckpt = CheckpointManager(self.out / "checkpoints", keep=2)

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
            # Written only now: a refused run must not overwrite the config of the run that
            # owns the directory; a resumed run keeps the config it was started with.
            if is_main_process():  # multi-process: process 0 writes every run file
                cfg_json = json.dumps(config_to_dict(self.cfg), indent=2)
                (self.out / "config.json").write_text(cfg_json)
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
            desc=_STAGE["label"] or self.desc,
            position=_STAGE["slot"] if sys.stderr.isatty() else None,
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


def key_data(key: jax.Array) -> np.ndarray:
    return np.asarray(jax.random.key_data(key))


def save_model(out: Path, params, cfg: Config, tok) -> Path:
    return export_model(params, cfg, tok, out / "model")


def optim_with(
    lr: float, warmup_frac: float, base: OptimConfig, weight_decay: float | None = None
) -> OptimConfig:
    """The optimizer of a stage: `base` with the stage's learning rate, warm-up and (when
    not None) weight decay."""
    wd = base.weight_decay if weight_decay is None else weight_decay
    return dataclasses.replace(base, lr=lr, warmup_frac=warmup_frac, weight_decay=wd)


def eval_records(cfg: Config) -> list[dict]:
    if not cfg.paths.eval_data:
        return []
    return load_records(cfg.paths.eval_data, load_rule_book(cfg.task.rule_book))[
        : cfg.train.eval_size
    ]


def final_eval(out: Path, params, cfg: Config, tok, records) -> dict:
    if not records:
        return {}
    metrics, _ = evaluate_policy(params, cfg, tok, records)
    if is_main_process():
        (out / "eval.json").write_text(json.dumps(metrics, indent=2, default=float))
    return metrics


def finish_run(run: Run, params, cfg: Config, tok, stop_after, step0) -> dict:
    done = stop_after is None or step0 + stop_after >= run.total_steps
    summary: dict[str, Any] = {"out": str(run.out), "complete": done}
    if done:
        host = tree_to_host(params)  # a collective when params span several processes
        summary["model"] = str(run.out / "model")
        if is_main_process():
            save_model(run.out, host, cfg, tok)
        params = params if jax.process_count() == 1 else local_copy(host)
        summary["eval"] = final_eval(run.out, params, cfg, tok, eval_records(cfg))
    run.ckpt.close()
    if jax.process_count() > 1:
        # Process 0 does extra work at the end (the export); without this barrier the other
        # processes reach jax.distributed's shutdown barrier first, and on a loaded machine
        # its deadline can pass before process 0 arrives.
        multihost_utils.sync_global_devices(f"agrl finished {run.out}")
    return summary
