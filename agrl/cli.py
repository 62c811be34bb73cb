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

from agrl.config import ConfigError
from agrl.data import DataError, has_verdicts, load_records

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the command line or its inputs; printed as one line, exit 2."""


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
    records = load_records(args.file)
    labels = Counter(r["label"] for r in records)
    mix = " ".join(f"{lab}:{labels[lab]}" for lab in (1, 2, 3, 4))
    verdicts = "with verdicts" if has_verdicts(records) else "without verdicts (label-only)"
    print(f"{args.file}: {len(records)} records OK, {verdicts}; labels {mix}")
    return 0


def add_validate(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="check a JSONL data file against the schema",
        description="Validate a JSONL file (docs/data.md); errors name file, line and field.",
    )
    p.add_argument("file")
    p.set_defaults(func=_validate)


COMMANDS: list[Callable] = [add_world, add_validate]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agrl", description="TaoSR-AGRL in pure JAX: relevance world, data tools."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `agrl` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DataError, ConfigError, UserError) as e:
        print(f"agrl {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        print(f"agrl {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
