"""The relevance world (SPEC 3): catalog, rule engine, generator, teacher, splits.

    from agrl.world import WorldConfig, generate_world, write_world
    world = generate_world(WorldConfig(seed=0))   # {"sft": [...], "rl": [...], ...}

Names are resolved lazily so that importing agrl.task.rules stays light.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "WorldConfig": "agrl.world.config",
    "TeacherConfig": "agrl.world.config",
    "QUERY_TYPES": "agrl.task.data",
    "HARD_TYPES": "agrl.task.data",
    "SPLITS": "agrl.world.config",
    "generate_world": "agrl.world.splits",
    "write_world": "agrl.world.splits",
    "summarize": "agrl.world.splits",
    "format_summary": "agrl.world.splits",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agrl.world' has no attribute {name!r}")
