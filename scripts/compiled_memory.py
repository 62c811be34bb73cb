"""Compile the real jitted RL / SFT step of a preset on a simulated pod of fake CPU devices
and print its per-device memory next to the capacity plan's (docs/scaling.md).

    python scripts/compiled_memory.py --preset qwen3-8b --mesh 4,8,1 --devices 32 \
        --micro-batch 4 --remat layer --device h100

No weight is materialised (abstract inputs); compiling an 8B model takes minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="qwen3-0.6b")
    p.add_argument("--mesh", default="4,8,1", help="data,fsdp,tensor")
    p.add_argument("--devices", type=int, default=32)
    p.add_argument("--device", default="h100", help="capacity-plan device (HBM to fit)")
    p.add_argument("--step", choices=("rl", "sft"), default="rl")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--group", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=4, help="rows per device per pass; 0: all")
    p.add_argument("--remat", choices=("none", "layer", "dots"), default="layer")
    p.add_argument("--param-dtype", choices=("bfloat16", "float32"), help="default: the preset's")
    a = p.parse_args()
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={a.devices}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import dataclasses

    from agrl.config import MemoryConfig, MeshConfig
    from agrl.experiments.capacity import DEVICES, Workload, plan, plan_model
    from agrl.experiments.compiled_memory import compiled_step_memory
    from agrl.parallel.sharding import make_mesh

    pm = plan_model(a.preset)
    cfg = (
        pm.cfg if a.param_dtype is None else dataclasses.replace(pm.cfg, param_dtype=a.param_dtype)
    )
    mesh_cfg = MeshConfig(*(int(x) for x in a.mesh.split(",")))
    mesh = make_mesh(mesh_cfg)
    memory = MemoryConfig(micro_batch_rows=a.micro_batch, remat=a.remat)
    rows = a.prompts * a.group
    t0 = time.perf_counter()
    got = compiled_step_memory(
        cfg, mesh, step=a.step, rows=rows, prompt_len=a.prompt_len, new_tokens=a.new_tokens,
        memory=memory,
    )  # fmt: skip
    secs = time.perf_counter() - t0
    work = Workload(a.prompts, a.group, a.prompt_len, a.new_tokens, 1,
                    a.micro_batch or None, a.remat)  # fmt: skip
    planned = plan(dataclasses.replace(pm, cfg=cfg), mesh_cfg, a.devices, DEVICES[a.device], work)
    upd = planned.update_gb
    print(f"{a.preset} {a.step} step, mesh {a.mesh} on {a.devices} fake devices, {rows} rows "
          f"of {a.prompt_len}+{a.new_tokens} tokens, micro-batch {a.micro_batch} rows/device, "
          f"remat {a.remat}; compiled in {secs:.0f} s")  # fmt: skip
    print("| GB per device | compiled (XLA) | plan |")
    print("|---|---|---|")
    g = got.gb()
    print(f"| arguments (params, optimizer, batch) | {g['arguments']:.2f} | "
          f"{planned.gb['policy'] + planned.gb['adam']:.2f} (+ batch) |")  # fmt: skip
    print(f"| temporaries (gradients, optimizer, activations) | {g['temporaries']:.2f} | "
          f"{upd - planned.gb['policy'] - planned.gb['adam']:.2f} |")  # fmt: skip
    print(f"| update peak | {g['peak']:.2f} | {upd:.2f} |")
    hbm = DEVICES[a.device].hbm_gb
    print(f"ratio compiled / plan: {g['peak'] / upd:.2f}; fits {DEVICES[a.device].name} "
          f"({hbm:.0f} GB): compiled {'yes' if g['peak'] <= hbm else 'NO'}, "
          f"plan {'yes' if upd <= hbm else 'NO'}")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
