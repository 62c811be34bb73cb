"""Print the per-device memory and per-step time model of an RL step (agrl/experiments/capacity.py).

    python scripts/plan.py --preset qwen3-8b --mesh 4,8,1 --devices 32 --device tpu-v5p
    python scripts/plan.py --doc      # the tables of docs/scaling.md

--mesh data,fsdp,tensor (one may be -1); presets: agrl.model.presets plus 30b-a3b-class.
"""

from __future__ import annotations

import argparse

from agrl.config import MeshConfig
from agrl.experiments.capacity import DEVICES, Workload, doc_tables, plan, plan_model, plan_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="qwen3-0.6b")
    p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor")
    p.add_argument("--devices", type=int, default=8, help="devices in the mesh")
    p.add_argument("--device", choices=sorted(DEVICES), default="h100")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--group", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--mu", type=int, default=1)
    p.add_argument("--micro-batch", type=int, help="rows per device per update pass")
    p.add_argument(
        "--remat",
        choices=("none", "layer", "dots"),
        default="none",
        help="memory.remat of the update",
    )
    p.add_argument("--doc", action="store_true", help="print the tables of docs/scaling.md")
    a = p.parse_args()
    if a.doc:
        print(doc_tables())
        return
    work = Workload(a.prompts, a.group, a.prompt_len, a.new_tokens, a.mu, a.micro_batch, a.remat)
    mesh = MeshConfig(*(int(x) for x in a.mesh.split(",")))
    print(plan_table([plan(plan_model(a.preset), mesh, a.devices, DEVICES[a.device], work)]))


if __name__ == "__main__":
    main()
