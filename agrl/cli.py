"""The `agrl` command. One subcommand per entry of COMMANDS.

A command is added by writing `add_<name>(subparsers)` that registers its parser with
`set_defaults(func=...)` and appending it to COMMANDS; `agrl --help` lists exactly the
registered ones. User mistakes (bad file, bad value) print one line to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable

EXIT_USER_ERROR = 2
# The error types that mean "the user's input is wrong" (module, class). The modules are
# imported lazily by the commands (`agrl --help` must not pay for jax, torch, orbax): an
# exception can only be of one of these types if its module has been imported already.
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("agrl.config.base", "ConfigError"),
    ("agrl.task.data", "DataError"),
    ("agrl.task.rules", "RuleBookError"),
    ("agrl.task.tokenizer", "TokenizerError"),
    ("agrl.train.loop", "RunError"),
    ("agrl.train.checkpoint", "CheckpointError"),
    ("agrl.model.hf", "CheckpointError"),
    ("agrl.task.tokenizer", "TokenizerError"),
    ("agrl.train.export", "ExportError"),
)


class UserError(Exception):
    """A mistake in the command line or its inputs; printed as one line, exit 2."""


def cumpt_beta(text: str) -> float:
    """argparse type of --beta: the CumPT threshold, a float in (0, 1]."""
    try:
        beta = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < beta <= 1.0:
        raise argparse.ArgumentTypeError(f"{beta} is not in (0, 1]")
    return beta


def is_user_error(e: BaseException) -> bool:
    """Whether e is one of USER_ERRORS (or UserError, or an OSError such as a missing file)."""
    if isinstance(e, (UserError, OSError)):
        return True
    loaded = (getattr(sys.modules[m], name) for m, name in USER_ERRORS if m in sys.modules)
    return any(isinstance(e, cls) for cls in loaded)


def _world(args: argparse.Namespace) -> int:
    from agrl.world.config import TeacherConfig, WorldConfig
    from agrl.world.splits import format_summary, write_world

    teacher = TeacherConfig(label_noise=args.label_noise)
    cfg = WorldConfig(
        seed=args.seed,
        n_sft=args.n_sft,
        n_rl=args.n_rl,
        n_b_eval=args.n_b_eval,
        n_w_eval=args.n_w_eval,
        teacher=teacher,
    )
    summary = write_world(cfg, args.out)
    print(format_summary(summary))
    print(f"wrote sft.jsonl rl.jsonl b_eval.jsonl w_eval.jsonl tokenizer/ to {args.out}")
    return 0


def add_world(sub) -> None:
    from agrl.world.config import TeacherConfig, WorldConfig

    d, t = WorldConfig(), TeacherConfig()
    p = sub.add_parser(
        "world",
        help="generate the relevance world (splits + tokenizer)",
        description="Write sft/rl/b_eval/w_eval JSONL files and tokenizer/ into --out.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=d.seed)
    for split in ("sft", "rl", "b_eval", "w_eval"):
        flag = "--n-" + split.replace("_", "-")
        p.add_argument(flag, type=int, default=d.size(split), help=f"records in {split}")
    p.add_argument("--label-noise", type=float, default=t.label_noise, help="teacher label noise")
    p.set_defaults(func=_world)


def _validate(args: argparse.Namespace) -> int:
    from agrl.task.data import has_verdicts, load_records
    from agrl.task.rules import load_rule_book

    book = load_rule_book(args.rule_book)
    records = load_records(args.file, book)
    labels = Counter(r["label"] for r in records)
    mix = " ".join(f"{lab}:{labels[lab]}" for lab in (1, 2, 3, 4))
    verdicts = "with verdicts" if has_verdicts(records) else "without verdicts (label-only)"
    print(f"{args.file}: {len(records)} records OK ({book.describe()}), {verdicts}; labels {mix}")
    return 0


def add_validate(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="check a JSONL data file against the schema",
        description="Validate a JSONL file (docs/data.md); errors name file, line and field. "
        "Verdicts are checked against the rule book (docs/rulebook.md).",
    )
    p.add_argument("file")
    p.add_argument(
        "--rule-book", default="world", help="world, label_only or a TOML file (default world)"
    )
    p.set_defaults(func=_validate)


def _run_config(args: argparse.Namespace):
    """Config of a training command (agrl.config.build_config): method preset < --config
    file < path flags < section.key=value overrides. With --init the model config is the
    checkpoint's, with the model.* runtime choices given here applied and architecture
    fields that contradict it refused (agrl.train.loop.init_model_config)."""
    from agrl.config import build_config, load_toml
    from agrl.train.loop import resolve_model

    flags = {"world": args.world, "init": getattr(args, "init", None),
             "ref": getattr(args, "ref", None), "out": args.out}  # fmt: skip
    paths = [f"paths.{k}={v}" for k, v in flags.items() if v]
    cfg = build_config(args.config, [*paths, *args.overrides])
    if not cfg.paths.init:
        return cfg
    given = set(load_toml(args.config).get("model", {})) if args.config else set()
    given |= {o.split("=", 1)[0].strip().removeprefix("model.") for o in args.overrides
              if o.strip().startswith("model.")}  # fmt: skip
    return resolve_model(cfg, given)


def _random_init_warning(cfg) -> str:
    """The start-up warning of a run without --init: what is being trained from scratch."""
    import math

    import jax

    from agrl.model import param_shapes

    m = cfg.model
    shapes = jax.tree.leaves(param_shapes(m), is_leaf=lambda x: isinstance(x, tuple))
    n = sum(math.prod(s) for s in shapes)
    return (
        f"agrl train: warning: no --init: training a randomly initialised {m.arch} model of "
        f"{n / 1e6:.2f}M parameters ({m.num_layers} layers, hidden {m.hidden_size}, vocab "
        f"{m.vocab_size}); to fine-tune a pretrained model pass --init HF_DIR (a Hugging "
        "Face model directory)"
    )


def _train(args: argparse.Namespace) -> int:
    from agrl.parallel.distributed import init_distributed, resolve_spec
    from agrl.train.stages import run_dpo, run_rl, run_sft

    try:  # before any device is touched; flags, else AGRL_* env, else cluster auto-detect
        spec = resolve_spec(args.coordinator, args.num_processes, args.process_id)
    except ValueError as e:
        raise UserError(str(e)) from None
    init_distributed(spec)
    cfg = _run_config(args)
    if not cfg.paths.init and args.stage == "sft":
        print(_random_init_warning(cfg), file=sys.stderr)
    run = {"sft": run_sft, "dpo": run_dpo, "rl": run_rl}[args.stage]
    summary = run(cfg, resume=args.resume)
    ev = summary.get("eval") or {}
    line = f"{args.stage} done: model in {summary.get('model')}"
    if ev:
        line += f"; eval accuracy {ev['accuracy']:.3f} macro-F1 {ev['macro_f1']:.3f}"
    print(line)
    return 0


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a policy: sft, dpo or rl (train.method: grpo, grpo_pr, agrl, ..., agrl_hint)",
        description=(
            "Run one training stage. The config is built from the method preset "
            "(train.method), then --config FILE (TOML), then the path flags, then "
            "section.key=value overrides. A run directory holds checkpoints, metrics.jsonl, "
            "tb/, and at the end model/ (a Hugging Face directory) and eval.json."
        ),
    )
    p.add_argument("stage", choices=("sft", "dpo", "rl"))
    p.add_argument("--config", help="TOML file with config sections")
    p.add_argument("--world", help="directory written by `agrl world` (data + tokenizer)")
    p.add_argument("--init", help="model directory to start from (required for dpo and rl)")
    p.add_argument("--ref", help="reference model directory (default: --init)")
    p.add_argument("--out", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--coordinator", help="multi-process: host:port of process 0 (docs/scaling.md)")
    p.add_argument("--num-processes", type=int, help="multi-process: number of processes")
    p.add_argument("--process-id", type=int, help="multi-process: this process, 0..n-1")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.method=grpo")
    p.set_defaults(func=_train)


def _eval(args: argparse.Namespace) -> int:
    import json

    from agrl.config import Config, TaskConfig, TrainConfig
    from agrl.eval.metrics import metrics_table_markdown, write_json
    from agrl.eval.policy_eval import evaluate_policy
    from agrl.model import load_pretrained
    from agrl.task.data import load_records
    from agrl.task.rules import load_rule_book
    from agrl.task.serving import model_order, model_rule_book
    from agrl.task.tokenizer import load_tokenizer

    params, model_cfg = load_pretrained(args.model)
    tok = load_tokenizer(args.model)
    rule_book = model_rule_book(args.model, args.rule_book)
    book = load_rule_book(rule_book)
    order = model_order(args.model, args.order)
    print(f"eval: {book.describe()}; {order}")
    cfg = Config(model=model_cfg, train=TrainConfig(response_order=order),
                 task=TaskConfig(rule_book=rule_book))  # fmt: skip
    records = load_records(args.data, book)
    metrics, _ = evaluate_policy(params, cfg, tok, records, progress=True, beta=args.beta)
    print(metrics_table_markdown({args.model: metrics}))
    if args.out:
        write_json(args.out, metrics)
        print(f"wrote {args.out}")
    else:
        print(json.dumps({k: metrics[k] for k in ("accuracy", "macro_f1", "good_f1")}))
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model directory on a labelled JSONL file",
        description="Greedy decoding and label posterior: per-class F1, Good F1, macro-F1, "
        "accuracy, rule adherence, step accuracy, ordinal MAE, confusion, per-type accuracy, "
        "CumPT tiers (docs/evaluation.md).",
    )
    p.add_argument("--model", required=True, help="Hugging Face model directory (+ tokenizer)")
    p.add_argument("--data", required=True, help="labelled JSONL file")
    p.add_argument("--out", help="write all metrics as JSON here")
    p.add_argument(
        "--order",
        choices=("label_first", "think_first"),
        help="response order (default: the model's agrl_prompt.json, else label_first)",
    )
    p.add_argument(
        "--rule-book",
        help="world, label_only or a TOML file (default: the one the model was exported "
        "with, in its agrl_prompt.json; else world)",
    )
    p.add_argument("--beta", type=cumpt_beta, default=0.5, help="CumPT threshold in (0, 1]")
    p.set_defaults(func=_eval)


def _score(args: argparse.Namespace) -> int:
    from agrl.eval.scoring import format_tier_summary, score_file

    s = score_file(args.model, args.data, args.out, batch_size=args.batch_size, beta=args.beta)
    print(f"CumPT tiers at beta={args.beta}:")
    print(format_tier_summary(s["tiers"]))
    line = f"scored {s['n']} records -> {args.out}"
    if s["labelled"]:
        line += f"; posterior accuracy {s['accuracy']:.3f}"
    print(line)
    return 0


def add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="label-posterior scores (prefill only) and CumPT tiers for a JSONL file",
        description="Serve-style scoring: the label posterior at the first response "
        "position (every spelling of each label token); one JSON line per record with its "
        "id, query, item (label), p1..p4, pred_label, expected_label and tier; then a table "
        "of the tiers (with accuracy when the records are labelled).",
    )
    p.add_argument("--model", required=True, help="Hugging Face model directory (+ tokenizer)")
    p.add_argument("--data", required=True, help="JSONL with query and item (label optional)")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--beta", type=cumpt_beta, default=0.5, help="CumPT threshold in (0, 1]")
    p.set_defaults(func=_score)


def _export(args: argparse.Namespace) -> int:
    from agrl.train.export import export_checkpoint

    r = export_checkpoint(args.run, args.out, step=args.step, force=args.force,
                          tokenizer=args.tokenizer)  # fmt: skip
    print(f"exported step {r['step']} of {args.run} -> {r['out']} (steps: {r['steps']})")
    return 0


def add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint of a run as a Hugging Face directory to serve",
        description="Write config.json, safetensors, the tokenizer with the judge's chat "
        "template, generation_config.json and agrl_prompt.json (docs/serving.md) from a "
        "checkpoint of a run directory; the params only, the optimizer state is not read.",
    )
    p.add_argument("--run", required=True, help="run directory (the --out of agrl train)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--force", action="store_true", help="replace a model already in --out")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the run's)")
    p.set_defaults(func=_export)


def _reproduce(args: argparse.Namespace) -> int:
    from agrl.experiments.reproduce import run_reproduce
    from agrl.experiments.setup import build_plan

    plan = build_plan(quick=args.quick, seeds=args.seeds, out=args.out, config=args.config,
                      overrides=args.overrides, workers=args.workers)  # fmt: skip
    run_reproduce(plan)
    print((plan.out / "results.md").read_text())
    return 0


def add_reproduce(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="the main job: world -> SFT -> DPO -> RL (5 methods) -> table + figures",
        description=(
            "Reproduce the SPEC 8 comparison on the relevance world. Reruns on the same --out "
            "reuse finished stages and resume unfinished ones. Overrides: section.key=value "
            "for the Config tree, world.key=value for the world, diag.prompts=N."
        ),
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in minutes")
    p.add_argument("--seeds", type=int, default=1, help="training seeds 0..N-1 (default 1)")
    p.add_argument("--out", default="runs/reproduce", help="output directory")
    p.add_argument("--config", default=None, help="TOML file layered over the defaults")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="stages run side by side, each in a process on its own share of the CPU cores "
        "(default 0: 2 on a CPU with at least 2 cores, else 1, and 1 with --quick; 1: one at "
        "a time in this process)",
    )
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.set_defaults(func=_reproduce)


COMMANDS: list[Callable] = [
    add_world,
    add_validate,
    add_train,
    add_eval,
    add_score,
    add_export,
    add_reproduce,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agrl",
        description="TaoSR-AGRL in pure JAX: relevance world, data tools, training, evaluation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `agrl` console script; returns the exit status."""
    parser = build_parser()
    # Overrides (section.key=value) may follow the options, which argparse's positional
    # matching does not allow; collect them here for the commands that take them.
    args, extra = parser.parse_known_args(argv)
    if extra:
        bad = [x for x in extra if x.startswith("-") or "=" not in x]
        if bad or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        if not is_user_error(e):
            raise
        print(f"agrl {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
