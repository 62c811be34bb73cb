"""Export a model as a Hugging Face directory ready to serve (docs/serving.md).

`export_model` is the one export path: the end of a run (`finish_run` writes RUN/model)
and `agrl export` (any checkpoint of a run, `export_checkpoint`) both call it. It writes
`save_pretrained`'s directory (config.json, safetensors, tokenizer files, and
generation_config.json with the bos/eos/pad ids) with the judge's chat template in the
tokenizer files, plus agrl_prompt.json naming the prompt format
(`agrl.task.serving`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agrl.config import Config, config_from_dict
from agrl.model import param_shapes, save_pretrained
from agrl.task.serving import PROMPT_CARD, RULE_BOOK_FILE, chat_template, prompt_card
from agrl.task.tokenizer import TokenizerError, label_token_variants, load_tokenizer
from agrl.train.checkpoint import CheckpointManager

MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")


class ExportError(RuntimeError):
    """A run directory, step or output directory that `agrl export` cannot use."""


def export_model(params: Any, cfg: Config, tok: Any, out_dir: str | Path) -> Path:
    """Write params as a Hugging Face directory with the serving prompt; returns the dir."""
    order = cfg.train.response_order
    try:
        label_ids = label_token_variants(tok).tolist()
    except TokenizerError:  # think-first with multi-token labels: nothing to score with
        label_ids = [[], [], [], []]
    serving = copy.copy(tok)  # the caller's tokenizer keeps its own chat template
    serving.chat_template = chat_template(order)
    model = cfg.model
    if model.param_dtype != model.compute_dtype:  # e.g. an f32 master copy of a bf16 model:
        dt = jnp.dtype(model.compute_dtype)  # exported in the dtype it computes in
        params = jax.tree.map(lambda p: jnp.asarray(p, dt), params)
        model = dataclasses.replace(model, param_dtype=model.compute_dtype)
    d = save_pretrained(params, model, out_dir, tokenizer=serving)
    rule_book = cfg.task.rule_book
    if rule_book not in ("world", "label_only"):  # a user's TOML travels with the model
        shutil.copyfile(rule_book, d / RULE_BOOK_FILE)
        rule_book = RULE_BOOK_FILE
    card = prompt_card(tok, order, label_ids, rule_book)
    (d / PROMPT_CARD).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return d


def _holds_model(d: Path) -> bool:
    return d.is_dir() and (
        any((d / f).exists() for f in MODEL_FILES) or any(d.glob("model-*.safetensors"))
    )


def export_checkpoint(
    run_dir: str | Path,
    out_dir: str | Path,
    step: int | None = None,
    force: bool = False,
    tokenizer: str | Path | None = None,
) -> dict[str, Any]:
    """Export the params of checkpoint `step` (default: the latest) of a run directory.

    The model config and the response order come from RUN/config.json, the tokenizer from
    its paths.tokenizer (or `tokenizer`). Only the params are read from the checkpoint.
    Returns {"out", "step", "steps"}; ExportError names what is missing.
    """
    run, out = Path(run_dir), Path(out_dir)
    if not run.is_dir():
        raise ExportError(f"{run}: not a directory (give the --out of `agrl train`)")
    ckpt_dir, cfg_file = run / "checkpoints", run / "config.json"
    if not ckpt_dir.is_dir() or not cfg_file.is_file():
        raise ExportError(
            f"{run}: not a run directory with checkpoints (no checkpoints/ or config.json)"
        )
    with CheckpointManager(ckpt_dir) as mgr:
        steps = mgr.all_steps()
        if not steps:
            raise ExportError(f"{run}: no complete checkpoint in {ckpt_dir}")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise ExportError(f"{run}: no checkpoint of step {step}; available steps: {steps}")
        if _holds_model(out) and not force:
            raise ExportError(f"{out} already holds a model; choose another --out or --force")
        try:
            cfg = config_from_dict(json.loads(cfg_file.read_text()))
        except json.JSONDecodeError as e:
            raise ExportError(f"{cfg_file}: not valid JSON ({e})") from None
        tok_dir = Path(tokenizer or cfg.paths.tokenizer or "")
        if not str(tokenizer or cfg.paths.tokenizer or "") or not tok_dir.exists():
            raise ExportError(
                f"{cfg_file}: the run's tokenizer {str(tok_dir)!r} is not found; "
                "give it with --tokenizer DIR"
            )
        tok = load_tokenizer(tok_dir)
        params = mgr.restore_part(step, ("train", "params"))
    is_shape = lambda x: isinstance(x, tuple)  # noqa: E731
    want = jax.tree.map(tuple, param_shapes(cfg.model), is_leaf=is_shape)
    got = jax.tree.map(lambda a: tuple(np.shape(a)), params)
    if want != got:
        raise ExportError(f"{run}: the params of step {step} do not fit the model of {cfg_file}")
    if force:
        for f in [*MODEL_FILES[1:], *(p.name for p in out.glob("model-*.safetensors"))]:
            (out / f).unlink(missing_ok=True)
    d = export_model(params, cfg, tok, out)
    return {"out": str(d), "step": int(step), "steps": steps}
