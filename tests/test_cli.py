"""The `agrl` command: world, validate, help, and user errors without tracebacks."""

import json
import subprocess
import sys

import pytest

from agrl.cli import COMMANDS, build_parser, main

SMALL = ["--n-sft", "60", "--n-rl", "40", "--n-b-eval", "20", "--n-w-eval", "20"]


def test_world_writes_splits_and_prints_table(tmp_path, capsys):
    assert main(["world", "--out", str(tmp_path), "--seed", "4", *SMALL]) == 0
    out = capsys.readouterr().out
    for split, n in (("sft", 60), ("rl", 40), ("b_eval", 20), ("w_eval", 20)):
        lines = (tmp_path / f"{split}.jsonl").read_text().splitlines()
        assert len(lines) == n and json.loads(lines[0])["id"].startswith(split)
        assert any(row.split()[:2] == [split, str(n)] for row in out.splitlines())
    assert "negation" in out.splitlines()[0] and "L4" in out.splitlines()[0]
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()


def test_validate_ok_and_bad(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"query": "a", "item": "b", "label": 2}) + "\n")
    assert main(["validate", str(good)]) == 0
    assert "1 records OK" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "a", "item": "b", "label": 7}) + "\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"agrl validate: error: {bad}:1: field 'label': must be 1..4, got 7"


def test_bad_value_exits_2_with_one_line(tmp_path, capsys):
    assert main(["world", "--out", str(tmp_path), "--n-sft", "-5"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "world.n_sft=-5" in err


def test_help_lists_only_working_commands():
    text = build_parser().format_help()
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(choices) == {add.__name__.removeprefix("add_") for add in COMMANDS}
    assert {"world", "validate", "train", "eval", "score"} <= set(choices)
    for name in choices:
        assert name in text
        with pytest.raises(SystemExit) as exit_info:  # every command parses its own --help
            build_parser().parse_args([name, "--help"])
        assert exit_info.value.code == 0


def test_console_entry_has_no_traceback(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_bytes(b"\xff\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agrl.cli", "validate", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "not valid UTF-8" in proc.stderr
