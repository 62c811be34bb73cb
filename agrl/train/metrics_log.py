"""Per-step metrics to `metrics.jsonl` and TensorBoard event files (issue 5 item 5).

One JSON object per line: {"step": int, "<name>": float | null, ..., "nonfinite": [names]}.
NaN and +-Inf are not valid JSON, so a non-finite value is written as null and its name is
listed in "nonfinite" (the field is present only when the list is non-empty). TensorBoard
receives the same values (non-finite ones included: TensorBoard shows them as such).

Every line is flushed as soon as it is written, so a killed run loses at most the step in
flight. Resuming: a checkpoint at step k holds the state after steps 0..k-1, so
`MetricsLogger(out_dir, resume_step=k)` keeps only the lines with step < k (those logged
after the checkpoint will be logged again), and `resume_step=0` (a run with no checkpoint,
fresh or resumed) starts the file afresh; the file never holds a step twice and its steps
are in order. TensorBoard event files are append-only; TensorBoard itself shows the newest
value of a re-logged step.

Multi-process: only one process should write. The caller passes
`enabled=(jax.process_index() == 0)`; a disabled logger accepts every call and writes
nothing (no directory, no file). This module does not import jax, so it stays cheap to use
from scripts.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def _to_float(name: str, value) -> float:
    """A python float from a python/numpy/jax scalar; anything else names the metric."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"metric {name!r} must be a scalar number, got {type(value).__name__}"
        ) from None


def metrics_record(step: int, metrics: Mapping[str, float]) -> dict:
    """The JSON object logged for one step: finite floats, null for non-finite ones."""
    record: dict = {"step": int(step)}
    nonfinite = []
    for name, value in metrics.items():
        if name in ("step", "nonfinite"):
            raise ValueError(f"metric name {name!r} is reserved")
        v = _to_float(name, value)
        if math.isfinite(v):
            record[name] = v
        else:
            record[name] = None
            nonfinite.append(name)
    if nonfinite:
        record["nonfinite"] = nonfinite
    return record


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All complete records of a metrics.jsonl file (a directory means its metrics.jsonl).

    A last line cut short by a kill (no trailing newline, invalid JSON) is skipped.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break  # torn final line
            if line.strip():
                records.append(json.loads(line))
    return records


def keep_before(path: str | os.PathLike, step: int) -> None:
    """Rewrite `path` keeping only the complete records with record["step"] < step (the
    steps a checkpoint at `step` has done); step 0 leaves an empty file."""
    path = Path(path)
    if not path.exists() and step > 0:
        return
    kept = [r for r in read_metrics(path) if r["step"] < step] if path.exists() else []
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLogger:
    """Write step metrics to <out_dir>/metrics.jsonl and TensorBoard events in <out_dir>/tb.

    resume_step: the step the run starts at (a checkpoint at k: the lines with step >= k
    are dropped first; 0: the file starts afresh), or None to append to an existing
    metrics.jsonl as is.
    """

    def __init__(
        self, out_dir: str | os.PathLike, enabled: bool = True, resume_step: int | None = None
    ):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / METRICS_FILE
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            keep_before(self.path, int(resume_step))
        self._file = open(self.path, "a")
        from tensorboardX import SummaryWriter  # imported lazily: slow, and writers only

        self._tb = SummaryWriter(str(self.out_dir / "tb"), flush_secs=10)

    def log(self, step: int, metrics: Mapping[str, float]) -> dict:
        """Log one step; returns the record written (also when disabled, for printing)."""
        record = metrics_record(step, metrics)
        if not self.enabled:
            return record
        if self._file is None:
            raise RuntimeError("MetricsLogger.log called after close()")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in metrics.items():
            self._tb.add_scalar(name, _to_float(name, value), global_step=int(step))
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
