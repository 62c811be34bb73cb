"""agrl.train.metrics_log: JSONL lines, null for non-finite, resume truncation, TensorBoard
scalars."""

import json
import math
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from agrl.train.metrics_log import MetricsLogger, keep_before, metrics_record, read_metrics


def _tb_scalars(tb_dir) -> dict[tuple[str, int], float]:
    """Parse TFRecord event files: [len u64][crc u32][event bytes][crc u32] per record."""
    out = {}
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                out[(v.tag, event.step)] = v.simple_value
    return out


def test_record_marks_nonfinite():
    rec = metrics_record(3, {"a": np.float32(0.5), "b": float("nan"), "c": -np.inf, "d": 2})
    assert rec == {"step": 3, "a": 0.5, "b": None, "c": None, "d": 2.0, "nonfinite": ["b", "c"]}
    assert "nonfinite" not in metrics_record(1, {"a": 1.0})
    with pytest.raises(TypeError, match="'v'"):
        metrics_record(1, {"v": [1.0, 2.0]})
    with pytest.raises(ValueError, match="reserved"):
        metrics_record(1, {"step": 1.0})


def test_jsonl_and_tensorboard_hold_the_same_values(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(1, {"reward": 0.25, "kl": 0.001})
        # flushed per line: readable while the logger is still open
        assert read_metrics(tmp_path) == [{"step": 1, "reward": 0.25, "kl": 0.001}]
        log.log(2, {"reward": 0.5, "kl": float("inf")})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        {"step": 1, "reward": 0.25, "kl": 0.001},
        {"step": 2, "reward": 0.5, "kl": None, "nonfinite": ["kl"]},
    ]
    tb = _tb_scalars(tmp_path / "tb")
    assert tb[("reward", 1)] == 0.25 and tb[("reward", 2)] == 0.5
    assert tb[("kl", 1)] == pytest.approx(0.001) and math.isinf(tb[("kl", 2)])


def test_resume_truncates_later_steps(tmp_path):
    log = MetricsLogger(tmp_path)
    for step in range(1, 6):
        log.log(step, {"x": float(step)})
    log.close()
    # a kill mid-write leaves a torn last line; it is skipped by the reader
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "x"')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    log = MetricsLogger(tmp_path, resume_step=3)  # checkpoint at 3: steps 0..2 are done
    log.log(3, {"x": 30.0})
    log.close()
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["x"]) for r in recs] == [(1, 1.0), (2, 2.0), (3, 30.0)]


@pytest.mark.parametrize(
    "logged,step,kept",
    [
        ([0, 1, 2, 3], 2, [0, 1]),  # checkpoint at 2: steps 2, 3 will be logged again
        ([0, 1, 2], 3, [0, 1, 2]),  # killed right after the checkpoint
        ([0, 1, 2], 0, []),  # killed before the first checkpoint: start afresh
        ([], 0, []),  # no file yet: an empty one
    ],
)
def test_keep_before_keeps_only_the_steps_a_checkpoint_has_done(tmp_path, logged, step, kept):
    path = tmp_path / "metrics.jsonl"
    if logged:
        path.write_text("".join(json.dumps({"step": s, "x": 1.0}) + "\n" for s in logged))
    keep_before(path, step)
    assert [r["step"] for r in read_metrics(path)] == kept


def test_disabled_logger_writes_nothing(tmp_path):
    out = tmp_path / "proc1"
    log = MetricsLogger(out, enabled=False)
    assert log.log(1, {"x": float("nan")}) == {"step": 1, "x": None, "nonfinite": ["x"]}
    log.close()
    assert not out.exists()


def test_log_after_close_raises(tmp_path):
    log = MetricsLogger(tmp_path)
    log.close()
    with pytest.raises(RuntimeError, match="after close"):
        log.log(1, {"x": 1.0})
