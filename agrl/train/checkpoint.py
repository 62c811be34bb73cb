"""Orbax save/restore of the whole run state, with a commit marker (SPEC 1, issue 5 item 6).

A run state has two parts:
  * `arrays`: a pytree of jax / numpy arrays: params, optax optimizer state, PRNG keys as raw
    uint32 key data (`jax.random.key_data(key)`; typed key arrays are refused), the AGR
    replay table. Arrays may be sharded over a multi-device mesh; each is written by
    orbax from its shards and restored onto the sharding of the `target` tree.
  * `host_state`: a JSON-able dict: step, data cursor, numpy Generator state
    (`rng.bit_generator.state`), metrics history, the config as a dict.

On-disk layout (one directory per step):
    <directory>/<step>/arrays/...            orbax StandardCheckpointHandler (OCDBT)
    <directory>/<step>/host/...              orbax JsonCheckpointHandler
    <directory>/<step>/agrl_commit.json      our commit marker, written last

Atomicity. Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it when
complete, so a killed save never leaves a `<step>` directory that orbax considers final.
We do not rely on that alone: a step is *complete* only when `agrl_commit.json` exists,
and that file is written (tmp file + fsync + rename) after orbax has finished. The marker
records the tree manifest (path -> shape, dtype) and the size of every file in the step,
so a truncated or deleted file and a target of another shape are reported by
`CheckpointError` naming the file or the tree path, never as a raw orbax traceback.
Retention (`keep`) is ours too: old steps are deleted only after the new marker exists,
and each deletion removes the marker first, so a kill mid-deletion leaves no step that
claims to be complete.

Saving is synchronous (`enable_async_checkpointing=False`): `save` returns once the step is
on disk and committed. This keeps resume deterministic and the kill semantics simple;
an asynchronous save would overlap the next training step but makes "the last complete
checkpoint" depend on timing.

Multi-process: every process calls `save`/`restore` (orbax writes each process's shards);
only process 0 writes markers and deletes old steps, followed by a barrier.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

COMMIT_FILE = "agrl_commit.json"
_MAX_LISTED = 12  # differences listed in one error message


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt, or does not fit the target."""


# ---------------------------------------------------------------------------------------
# Small pure helpers.


def tree_manifest(tree: Any) -> dict[str, dict]:
    """{tree path: {"shape": [...], "dtype": str}} for every leaf, path as `jax.tree_util.keystr`.

    Raises CheckpointError for a leaf that is not an array (python scalars belong in the
    host state) and for typed PRNG key arrays (save `jax.random.key_data(key)` instead).
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path)
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise CheckpointError(
                f"leaf {name} is a {type(leaf).__name__}, not an array; "
                "put python values in host_state"
            )
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise CheckpointError(
                f"leaf {name} is a typed PRNG key; save jax.random.key_data(key) instead"
            )
        out[name] = {"shape": [int(d) for d in leaf.shape], "dtype": str(np.dtype(leaf.dtype))}
    return out


def manifest_differences(saved: dict[str, dict], target: dict[str, dict]) -> list[str]:
    """Human-readable differences between a saved manifest and a target's (empty if equal)."""
    diffs = [f"{p}: in the checkpoint, missing from the target" for p in saved if p not in target]
    diffs += [f"{p}: in the target, missing from the checkpoint" for p in target if p not in saved]
    for p in saved.keys() & target.keys():
        s, t = saved[p], target[p]
        if s["shape"] != t["shape"]:
            diffs.append(f"{p}: shape expected {tuple(t['shape'])}, found {tuple(s['shape'])}")
        if s["dtype"] != t["dtype"]:
            diffs.append(f"{p}: dtype expected {t['dtype']}, found {s['dtype']}")
    return sorted(diffs)


def _abstract(leaf: Any) -> Any:
    """Orbax restore target for one leaf: numpy stays numpy; jax leaves keep their sharding."""
    if isinstance(leaf, np.ndarray):
        return leaf
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


def _file_sizes(step_dir: Path) -> dict[str, int]:
    """{relative path: size in bytes} of every file under a step directory but the marker."""
    return {
        str(p.relative_to(step_dir)): p.stat().st_size
        for p in sorted(step_dir.rglob("*"))
        if p.is_file() and p.name != COMMIT_FILE
    }


def _write_atomic(path: Path, text: str) -> None:
    """Write text so that `path` either does not exist or holds all of it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _summary(err: BaseException) -> str:
    first = str(err).strip().splitlines()
    return f"{type(err).__name__}: {first[0] if first else ''}"


# ---------------------------------------------------------------------------------------
# The manager.


class CheckpointManager:
    """Save and restore (arrays pytree, host dict) per step; keeps the newest `keep` steps.

    >>> mgr = CheckpointManager("runs/x/ckpt", keep=3)
    >>> mgr.save(10, {"params": params, "opt": opt_state, "key": key_data}, {"step": 10})
    >>> arrays, host = mgr.restore(target={"params": params, "opt": opt_state, "key": key_data})
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep={keep!r}: must be >= 1")
        self.directory = Path(directory).absolute()
        self.keep = keep
        self._is_writer = jax.process_index() == 0
        if self._is_writer:
            self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,  # retention is ours: only after the commit marker exists
            enable_async_checkpointing=False,
            create=True,
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    # -- listing ------------------------------------------------------------------------

    def _step_dirs(self) -> dict[int, Path]:
        """Every `<digits>` directory, complete or not (orbax tmp dirs are not digits)."""
        if not self.directory.is_dir():
            return {}
        return {int(p.name): p for p in self.directory.iterdir() if p.is_dir() and p.name.isdigit()}

    def all_steps(self) -> list[int]:
        """Steps with a commit marker, ascending."""
        return sorted(s for s, p in self._step_dirs().items() if (p / COMMIT_FILE).is_file())

    def latest_step(self) -> int | None:
        """The newest complete step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    # -- saving -------------------------------------------------------------------------

    def save(self, step: int, arrays: Any, host_state: dict) -> None:
        """Write one complete checkpoint of `step` (synchronous; returns once committed)."""
        step = int(step)
        manifest = tree_manifest(arrays)
        try:
            host_json = json.dumps(host_state)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"host_state is not JSON-serialisable: {err}") from None
        dirs = self._step_dirs()
        if step in dirs and (dirs[step] / COMMIT_FILE).is_file():
            raise CheckpointError(f"step {step} already has a complete checkpoint in {dirs[step]}")
        if step in dirs:  # left over by a killed save: never committed, safe to replace
            if self._is_writer:
                shutil.rmtree(dirs[step])
            self._barrier("agrl_ckpt_clear")
            self._mngr.reload()
        self._mngr.save(
            step,
            args=ocp.args.Composite(
                arrays=ocp.args.StandardSave(arrays),
                host=ocp.args.JsonSave(json.loads(host_json)),
            ),
            force=True,
        )
        self._mngr.wait_until_finished()
        if self._is_writer:
            step_dir = self.directory / str(step)
            marker = {"step": step, "manifest": manifest, "files": _file_sizes(step_dir)}
            _write_atomic(step_dir / COMMIT_FILE, json.dumps(marker, indent=1))
            self._prune(step)
        self._barrier("agrl_ckpt_commit")

    def _prune(self, newest: int) -> None:
        """Drop committed steps beyond `keep` and uncommitted leftovers older than `newest`."""
        committed = self.all_steps()
        doomed = committed[: max(0, len(committed) - self.keep)]
        doomed += [s for s, p in self._step_dirs().items() if s < newest and s not in committed]
        for s in doomed:
            step_dir = self.directory / str(s)
            (step_dir / COMMIT_FILE).unlink(missing_ok=True)  # first: never a marked half-dir
            shutil.rmtree(step_dir, ignore_errors=True)
        if doomed:
            self._mngr.reload()

    @staticmethod
    def _barrier(name: str) -> None:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    # -- restoring ----------------------------------------------------------------------

    def read_marker(self, step: int) -> dict:
        """The commit marker of a complete step (manifest and file sizes)."""
        path = self.directory / str(step) / COMMIT_FILE
        if not path.is_file():
            raise CheckpointError(
                f"no complete checkpoint for step {step} in {self.directory} "
                f"(complete steps: {self.all_steps()})"
            )
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"commit marker {path} is unreadable: {_summary(err)}") from None

    def verify(self, step: int) -> dict:
        """Check that every file recorded at commit is present with its size; return marker."""
        marker = self.read_marker(step)
        step_dir = self.directory / str(step)
        problems = []
        for rel, size in marker["files"].items():
            p = step_dir / rel
            if not p.is_file():
                problems.append(f"{rel}: missing")
            elif p.stat().st_size != size:
                problems.append(f"{rel}: {p.stat().st_size} bytes, expected {size}")
        if problems:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupt: "
                + "; ".join(problems[:_MAX_LISTED])
                + (
                    f"; and {len(problems) - _MAX_LISTED} more"
                    if len(problems) > _MAX_LISTED
                    else ""
                )
            )
        return marker

    def restore(self, step: int | None = None, target: Any = None) -> tuple[Any, dict]:
        """(arrays, host_state) of `step` (default: the latest complete one).

        target: an example pytree (arrays or jax.ShapeDtypeStruct with shardings) with the
        structure to restore into; jax leaves are restored onto the target leaf's sharding,
        numpy leaves as numpy. The saved tree must match it exactly (paths, shapes,
        dtypes), otherwise CheckpointError lists the differences. Without a target, the
        arrays come back as orbax's raw nested dicts/lists with the saved shardings, which
        is meant for inspection, not for resuming.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no complete checkpoint in {self.directory}")
        step = int(step)
        marker = self.verify(step)
        arrays_args = ocp.args.StandardRestore()
        if target is not None:
            diffs = manifest_differences(marker["manifest"], tree_manifest(target))
            if diffs:
                more = len(diffs) - _MAX_LISTED
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} does not match the target: "
                    + "; ".join(diffs[:_MAX_LISTED])
                    + (f"; and {more} more" if more > 0 else "")
                )
            arrays_args = ocp.args.StandardRestore(jax.tree.map(_abstract, target))
        try:
            restored = self._mngr.restore(
                step, args=ocp.args.Composite(arrays=arrays_args, host=ocp.args.JsonRestore())
            )
        except Exception as err:  # orbax/tensorstore raise many types; report one
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} could not be read: {_summary(err)}"
            ) from None
        return restored["arrays"], restored["host"]

    def restore_part(self, step: int, keys: tuple[str, ...]) -> Any:
        """The subtree arrays[keys[0]][keys[1]]... of a complete step, as host numpy arrays,
        without reading the rest (e.g. only the params, not the optimizer state); needs no
        devices, so a run trained on many devices is read on one host."""
        step = int(step)
        self.verify(step)
        where = self.directory / str(step) / "arrays"
        ckptr = ocp.PyTreeCheckpointer()
        try:
            meta = ckptr.metadata(where).item_metadata.tree
            for k in keys:
                meta = meta[k]
        except (KeyError, TypeError):
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} has no arrays {list(keys)}"
            ) from None
        except Exception as err:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} could not be read: {_summary(err)}"
            ) from None
        item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta)
        for k in reversed(keys):
            item = {k: item}
        rargs = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        try:
            out = ckptr.restore(
                where, args=ocp.args.PyTreeRestore(item, restore_args=rargs, partial_restore=True)
            )
        except Exception as err:  # orbax/tensorstore raise many types; report one
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} could not be read: {_summary(err)}"
            ) from None
        for k in keys:
            out = out[k]
        return out

    def close(self) -> None:
        self._mngr.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
