"""Run a Simulator over pattern indices in worker processes (results do not depend on the split)."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator

_WORKER_SIM = None


def default_workers() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _init(factory, args):
    global _WORKER_SIM
    _WORKER_SIM = factory(*args)


def _call(task):
    fn, arg = task
    return fn(_WORKER_SIM, arg)


def map_tasks(factory: Callable, factory_args: tuple, fn: Callable, tasks: Iterable, workers: int) -> Iterator:
    """Yield ``fn(sim, task)`` in order, with ``sim = factory(*factory_args)`` built once per worker."""
    tasks = list(tasks)
    if workers <= 1 or len(tasks) <= 1:
        sim = factory(*factory_args)
        for t in tasks:
            yield fn(sim, t)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init,
                             initargs=(factory, factory_args)) as pool:
        yield from pool.map(_call, [(fn, t) for t in tasks])
