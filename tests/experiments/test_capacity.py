"""The memory/time model (agrl/experiments/capacity.py): hand-checked figures, and
docs/scaling.md quotes it."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agrl.config import MeshConfig
from agrl.experiments.capacity import (
    DEVICES,
    MOE_30B_A3B,
    Workload,
    doc_tables,
    param_counts,
    plan,
    plan_model,
)

ROOT = Path(__file__).resolve().parents[2]


def test_parameter_counts_match_the_checkpoints():
    # Qwen3-0.6B: 0.596B with tied embeddings; Qwen3-8B: 8.19B; Qwen3-30B-A3B: 30.5B / 3.3B
    # active (the published 3.3B counts the input embedding, a lookup: 3.3 - 0.31 = 3.0).
    assert round(param_counts(plan_model("qwen3-0.6b"))[0] / 1e9, 2) == 0.60
    assert round(param_counts(plan_model("qwen3-8b"))[0] / 1e9, 2) == 8.19
    total, active = param_counts(MOE_30B_A3B)
    assert round(total / 1e9, 1) == 30.5 and round(active / 1e9, 1) == 3.0


def test_per_device_bytes_by_hand():
    m, w = plan_model("qwen3-8b"), Workload()
    p = plan(m, MeshConfig(4, 8, 1), 32, DEVICES["h100"], w)
    total = param_counts(m)[0]
    # Weights split 8 ways over fsdp except the norms (replicated): just above total / 8.
    assert total * 2 / 8 / 1e9 < p.gb["policy"] < total * 2 / 8 / 1e9 * 1.001
    assert p.gb["adam"] == pytest.approx(2 * p.gb["policy"])
    # KV cache: 2 * L * rows * K * S * Hd * 2 bytes, rows = 1024 / (4 * 8) = 32.
    assert p.gb["kv_cache"] == pytest.approx(2 * 36 * 32 * 8 * 768 * 128 * 2 / 1e9)
    # Doubling the devices with tensor=2 keeps the rows and halves the kv heads per device.
    q = plan(m, MeshConfig(4, 8, 2), 64, DEVICES["h100"], w)
    assert q.gb["kv_cache"] == pytest.approx(p.gb["kv_cache"] / 2)
    assert q.gb["activations"] < p.gb["activations"]
    # Micro-batching scales activations by rows per pass.
    a = plan(m, MeshConfig(4, 8, 1), 32, DEVICES["h100"], Workload(micro_batch=8))
    b = plan(m, MeshConfig(4, 8, 1), 32, DEVICES["h100"], Workload(micro_batch=4))
    assert a.gb["activations"] == pytest.approx(2 * b.gb["activations"])
    assert p.peak_gb > p.resident_gb > 0 and math.isfinite(p.seconds["total"])


def test_indivisible_mesh_raises():
    with pytest.raises(ValueError, match=r"layers/wk: dim 2 \(kv_heads=8\) not divisible"):
        plan(plan_model("qwen3-8b"), MeshConfig(1, 1, 16), 16, DEVICES["h100"])
    with pytest.raises(ValueError, match="do not split"):
        plan(plan_model("qwen3-8b"), MeshConfig(3, 1, 1), 3, DEVICES["h100"])


def test_doc_quotes_the_script():
    doc = (ROOT / "docs" / "scaling.md").read_text()
    block = re.search(r"<!-- begin: python scripts/plan.py --doc -->\n(.*)\n<!-- end", doc, re.S)
    assert block, "docs/scaling.md lost its plan.py block"
    assert block.group(1).strip() == doc_tables().strip()
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plan.py"), "--doc"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == doc_tables().strip()
