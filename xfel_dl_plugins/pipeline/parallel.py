"""Run one chain over a long run in parallel parts, through Dask (local processes or a cluster).

The run's trains are split into contiguous parts; each part runs the whole chain in its own worker
and writes its own results file, ``<stem>-S00000.h5``, ``<stem>-S00001.h5``, ... in one folder, like
the sequence files of a run: ``extra_data.RunDirectory(folder)`` opens them as one collection.
Stages that keep state across frames (the hit finder's moving window) restart in each part.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from ..errors import OutputExistsError, XfelDLError
from .manifest import Manifest
from .runner import ChainResult, open_source, run_chain


def split_trains(train_ids: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Contiguous (first, last) train-ID ranges, as even as possible."""
    chunks = [c for c in np.array_split(np.asarray(train_ids), max(1, parts)) if len(c)]
    return [(int(c[0]), int(c[-1])) for c in chunks]


def _run_part(manifest: Manifest, overwrite: bool) -> ChainResult:
    return run_chain(manifest, overwrite=overwrite, progress=False)


def run_in_parts(manifest: Manifest, parts: int, *, out_dir: Path, overwrite: bool = False,
                 scheduler: str | None = None, workers: int | None = None) -> list[ChainResult]:
    """Run ``manifest`` in ``parts`` train ranges; ``scheduler`` is a Dask scheduler address
    (e.g. of a dask-jobqueue SLURMCluster) or None for local worker processes."""
    import dask

    if manifest.input.run is None and manifest.input.proposal is None:
        raise XfelDLError("--parts needs a run as input (not a CXI file or a stream)")
    source = open_source(manifest.input)
    train_ids = source.info.train_ids
    source.close()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(manifest.output or manifest.name).stem
    jobs = []
    for i, (first, last) in enumerate(split_trains(train_ids, parts)):
        part = copy.deepcopy(manifest)
        part.input.trains = (first, last)
        part.output = str(out_dir / f"{stem}-S{i:05d}.h5")
        if Path(part.output).exists() and not overwrite:
            raise OutputExistsError(f"output file exists: {part.output} (pass --overwrite to replace it)")
        jobs.append(dask.delayed(_run_part)(part, overwrite))
    if scheduler:
        try:
            from dask.distributed import Client
        except ImportError:
            raise XfelDLError("--scheduler needs dask.distributed: pip install 'dask[distributed]' "
                              "(and dask-jobqueue for a SLURMCluster)") from None

        with Client(scheduler):
            return list(dask.compute(*jobs))
    return list(dask.compute(*jobs, scheduler="processes", num_workers=workers or min(len(jobs), 4)))
