"""The stages of `agrl reproduce` as a dependency graph, run in this process or in
`workers` child processes, each pinned to its own share of the CPU cores.

Why: the models of the reproduction are small (hidden 128), so one process keeps two CPU
cores only about 75% busy (an SFT step takes 67 ms on two cores, 101 ms on one), and the
teacher SFT and the oracle SFT, or two RL methods, are independent. Two single-core
processes side by side ran one default seed of `agrl reproduce` (then 2 layers) in 38 min
against 42-46 one stage at a time on the reference machine (docs/benchmarks.md).

A job's function must be importable by name (a module-level function) and idempotent: it
writes its results to disk, and calling it again once it has finished only reads them
back, so the caller collects every result in this process afterwards.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from typing import Any

from agrl.experiments.setup import fmt_seconds

# XLA's CPU flags for a process that owns one core: no Eigen thread pool (measured: 101 ms
# against 114 ms per SFT step with it, on one core)
SINGLE_CORE_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    fn: Callable[..., Any]  # a module-level function, run as fn(*args)
    args: tuple = ()
    after: tuple[str, ...] = ()  # names of the jobs that must finish first
    inline: bool = False  # run in this process (a stage that only reads finished results)


def usable_cores() -> list[int]:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def core_sets(cores: Sequence[int], workers: int) -> list[tuple[int, ...]]:
    """`cores` split into `workers` disjoint, contiguous sets whose sizes differ by at most
    one (the first sets take the remainder)."""
    if not 1 <= workers <= len(cores):
        raise ValueError(f"workers={workers}: must be in 1..{len(cores)} (the usable cores)")
    size, extra = divmod(len(cores), workers)
    out, i = [], 0
    for w in range(workers):
        n = size + (w < extra)
        out.append(tuple(cores[i : i + n]))
        i += n
    return out


def auto_workers(backend: str, process_count: int, cores: int, quick: bool = False) -> int:
    """The default worker count: 2 on a CPU backend with at least two cores and one jax
    process; else 1 (an accelerator runs one stage at a time, a multi-process run is
    already spread over its hosts). `quick` (`agrl reproduce --quick`): 1, since its stages
    are mostly compilation, which one core does at half the speed (measured: 85 s with two
    workers against 48 s with one)."""
    return 2 if backend == "cpu" and process_count == 1 and cores >= 2 and not quick else 1


def _exit_with_parent() -> None:
    """On Linux, have the kernel send this process SIGTERM when its parent dies (a killed
    `agrl reproduce` must not leave its stages training on)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _child(conn, cores: tuple[int, ...], slot: int, label: str, payload: bytes) -> None:
    """A worker process: pin to `cores`, set XLA's thread flags before jax starts its
    backend, run the job, and send None (success) or an error message back."""
    try:
        _exit_with_parent()
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cores)
        if len(cores) == 1:
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_CORE_XLA_FLAGS}"
        from agrl.train import loop

        loop.set_stage_label(label, slot)
        init, fn, args = pickle.loads(payload)
        if init is not None:
            init()
        fn(*args)
        conn.send(None)
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        from agrl.config import ConfigError
        from agrl.train.loop import RunError

        user = isinstance(e, ConfigError | RunError | FileNotFoundError | KeyboardInterrupt)
        conn.send(f"{type(e).__name__}: {e}" if user else traceback.format_exc())
    finally:
        conn.close()


def run_jobs(
    jobs: Sequence[Job],
    workers: int,
    on_start: Callable[[Job], None],
    on_finish: Callable[[Job, float], None],
    init: Callable[[], None] | None = None,
) -> None:
    """Run every job once its `after` jobs have finished, at most `workers` at a time,
    earliest in `jobs` first. workers=1: one by one in this process, in order. Otherwise
    each job runs in a fresh child process (spawned, so that its jax starts with the
    flags of its cores) on one of `workers` disjoint core sets, after `init()` (module-
    level, e.g. the compilation cache); inline jobs run here. The first failure stops
    everything: the other children are terminated and a RunError carries the message."""
    from agrl.train.loop import RunError

    names = [j.name for j in jobs]
    for j in jobs:
        missing = [a for a in j.after if a not in names[: names.index(j.name)]]
        if missing:
            raise ValueError(f"job {j.name}: runs after {missing}, which are not listed before it")
    if workers <= 1:
        for j in jobs:
            on_start(j)
            t = time.perf_counter()
            j.fn(*j.args)
            on_finish(j, time.perf_counter() - t)
        return
    ctx = multiprocessing.get_context("spawn")
    free = list(enumerate(core_sets(usable_cores(), workers)))
    pending, done = list(jobs), set()
    running: dict[Any, tuple[Job, Any, Any, tuple, float]] = {}  # conn -> job, process, ...
    try:
        while pending or running:
            while pending:
                ready = next((j for j in pending if done.issuperset(j.after)), None)
                if ready is None or (not ready.inline and not free):
                    break
                pending.remove(ready)
                on_start(ready)
                t = time.perf_counter()
                if ready.inline:
                    ready.fn(*ready.args)
                    done.add(ready.name)
                    on_finish(ready, time.perf_counter() - t)
                    continue
                slot, cores = free.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                payload = pickle.dumps((init, ready.fn, ready.args))
                proc = ctx.Process(
                    target=_child, args=(child, cores, slot, ready.name, payload), daemon=True
                )
                proc.start()
                child.close()
                running[parent] = (ready, proc, (slot, cores), t)
            if not running:
                if pending:  # unreachable after the order check above
                    raise RunError(f"jobs {[j.name for j in pending]} can never start")
                break
            for conn in wait(list(running)):
                job, proc, slot_cores, t = running.pop(conn)
                try:
                    message = conn.recv()
                except EOFError:
                    proc.join()
                    message = f"the worker process exited with code {proc.exitcode}"
                conn.close()
                proc.join()
                if message is not None:
                    raise RunError(f"stage {job.name} failed:\n{message}")
                free.append(slot_cores)
                free.sort()
                done.add(job.name)
                on_finish(job, time.perf_counter() - t)
    finally:
        for _, proc, _, _ in running.values():
            proc.terminate()
        for _, proc, _, _ in running.values():
            proc.join()
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------
# Progress: the overall stage counter and ETA.

# Seconds per cost unit ('SFT step') of one stage at a time on the reference 2-core machine,
# used until this machine has timed enough work to measure its own rate. 2026-12-03, the
# 3-layer defaults: seed 0 of the 3-seed run in two single-core workers took about 3210 s
# for 35,870 units (0.090 s per unit, times PARALLEL_SPEEDUP); 0.072 with 2 layers.
PRIOR_SECONDS_PER_UNIT = 0.10
MIN_MEASURED_UNITS = 1000.0
# The rate of two single-core worker processes against one two-core process on the same
# machine kind (2026-12-03: one default seed in 38m01s, 0.0635 s per unit)
PARALLEL_SPEEDUP = 1.13


def eta_seconds(
    spent: float, done_cost: float, left_cost: float, prior: float = PRIOR_SECONDS_PER_UNIT
) -> tuple[float, bool]:
    """(seconds left, measured?): this machine's rate once it has finished
    MIN_MEASURED_UNITS of work, else the reference machine's rate `prior`."""
    if done_cost >= MIN_MEASURED_UNITS:
        return spent / done_cost * left_cost, True
    return prior * left_cost, False


class Progress:
    """An overall stage counter with elapsed time and an ETA from per-stage cost estimates.
    The rate is wall time per finished cost unit since the first stage that did work, so it
    counts stages that run side by side (`workers`) once."""

    def __init__(self, costs: list[tuple[str, float]], wall: dict[str, Any], workers: int = 1):
        self.costs = dict(costs)
        self.order = [name for name, _ in costs]
        self.wall = wall
        self.prior = PRIOR_SECONDS_PER_UNIT / (PARALLEL_SPEEDUP if workers > 1 else 1.0)
        self.t0 = time.perf_counter()
        self.busy_from: float | None = None
        self.finished: set[str] = set()
        self.done_cost = 0.0

    def start(self, name: str, reused: bool = False) -> None:
        now = time.perf_counter()
        if not reused and self.busy_from is None:
            self.busy_from = now
        left = sum(c for n, c in self.costs.items() if n not in self.finished)
        spent = 0.0 if self.busy_from is None else now - self.busy_from
        seconds, measured = eta_seconds(spent, self.done_cost, left, self.prior)
        eta = f"ETA {fmt_seconds(seconds)}" + ("" if measured else " (reference machine's rate)")
        print(
            f"[stage {self.order.index(name) + 1}/{len(self.order)}] {name}  "
            f"elapsed {fmt_seconds(now - self.t0)}, {eta}",
            flush=True,
        )

    def finish(self, name: str, seconds: float, reused: bool) -> None:
        self.finished.add(name)
        if reused and name in self.wall:
            return  # keep the wall time of the invocation that made the stage
        self.wall[name] = {"seconds": round(seconds, 2), "reused": reused}
        if not reused:
            self.done_cost += self.costs[name]
