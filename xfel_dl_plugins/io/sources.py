"""Input sources: European XFEL runs (through EXtra-data) and CXI files, streamed in batches of frames
(karabo-bridge streams are in :mod:`.bridge`).

Each source yields dicts of per-frame arrays (``data``, ``valid``, ``train_id``, ``pulse_id``,
``cell_id``) a bounded number of frames at a time, so memory does not grow with the run length.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputDataError
from .cxi import read_cxi

#: CONTROL sources/keys where a run may record the photon energy (eV) and detector distance (m)
#: (the simulator writes SPB_XFELDL_SIM/MDL/SETTINGS); the manifest's [geometry] overrides them.
RECORDED_ENERGY = [("*/MDL/SETTINGS", "photonEnergy"), ("*/MDL/EXPERIMENT", "photonEnergy")]
RECORDED_DISTANCE = [("*/MDL/SETTINGS", "detectorDistance"), ("*/MDL/EXPERIMENT", "detectorDistance")]


@dataclass
class SourceInfo:
    """What a source knows about itself, for geometry and provenance."""

    description: str
    train_ids: np.ndarray | None  # None for a stream: known only at its end
    n_frames: int | None
    detector: str  # "AGIPD1M", "JUNGFRAU4M" or "flat"
    frame_shape: tuple[int, ...]
    proposal: int = 0
    run: int = 0
    detector_source: str = ""
    recorded: dict = field(default_factory=dict)  # photon_energy_eV, distance_m, pixel_size_m when known


def _first_recorded(run, candidates) -> float | None:
    """The run-start value of the first matching CONTROL source/key, if the run records one."""
    for pattern, key in candidates:
        for src in sorted(fnmatch.filter(run.control_sources, pattern)):
            if f"{key}.value" in run[src].keys():
                return float(run.get_run_value(src, key))
    return None


def open_run_data(path=None, *, proposal=None, run_number=None, data="proc"):
    """Open a run with EXtra-data (directory, single file, or proposal + run); return (run, label).

    A file EXtra-data cannot read is an error here, not a silently skipped part of the run."""
    import extra_data

    if path is not None and not Path(path).exists():
        raise InputDataError(f"run directory not found: {path}")
    label = str(path) if path is not None else f"proposal {proposal} run {run_number} ({data})"
    skipped = io.StringIO()  # EXtra-data reports unreadable files on stderr and skips them
    try:
        with contextlib.redirect_stderr(skipped):
            if path is None:
                run = extra_data.open_run(proposal, run_number, data=data)
            elif Path(path).is_file():
                run = extra_data.H5File(str(path))
            else:
                run = extra_data.RunDirectory(str(path))
    except Exception as exc:  # EXtra-data raises OSError, FileNotFoundError, ValueError...
        raise InputDataError(f"cannot open run {label}: {type(exc).__name__}: {exc}") from None
    bad = re.search(r"Skipping file (\S+)\s+\(error was: (.*)\)", skipped.getvalue())
    if bad:  # losing a file silently would lose data: refuse instead
        raise InputDataError(f"{label}: file {bad.group(1)} cannot be read (truncated or corrupt?): {bad.group(2)}")
    return run, label


class RunSource:
    """AGIPD-1M frames of a European XFEL run, raw or calibrated, opened through EXtra-data.

    Give a path, a proposal + run number, or an already open ``DataCollection`` (``collection``,
    as DAMNIT passes to its variables). Subclasses read other detectors."""

    detector_type = "AGIPD1M"
    frame_shape = (16, 512, 128)

    def __init__(self, path=None, *, collection=None, proposal=None, run_number=None, data="proc",
                 source=None, trains=None, raw=None, photons_per_adu=1.0):
        import extra_data

        if collection is not None:
            run, label = collection, "DataCollection " + ",".join(map(str, collection.train_ids[:1])) + "..."
        else:
            run, label = open_run_data(path, proposal=proposal, run_number=run_number, data=data)
        if trains is not None:
            first, last = trains
            run = run.select_trains(extra_data.by_id[first : last + 1])
        if raw is None:  # calibrated data when the run has it
            raw = not any("/CORR/" in s for s in run.instrument_sources)
        try:
            self.det = self._open_detector(run, source, raw)
        except InputDataError:
            raise
        except Exception as exc:
            names = ", ".join(sorted(run.instrument_sources)[:5]) or "none"
            raise InputDataError(f"{label} has no {'raw' if raw else 'calibrated'} {self.detector_type} data "
                                 f"({type(exc).__name__}: {exc}; instrument sources: {names}...)") from None
        self.run, self.raw, self.photons_per_adu = run, raw, photons_per_adu
        self._dark = None
        recorded = {k: v for k, v in (("photon_energy_eV", _first_recorded(run, RECORDED_ENERGY)),
                                      ("distance_m", _first_recorded(run, RECORDED_DISTANCE))) if v is not None}
        meta = run.run_metadata() if hasattr(run, "run_metadata") else {}
        self.info = SourceInfo(
            description=label,
            train_ids=np.asarray(self.det.train_ids, dtype=np.uint64),
            n_frames=self._n_frames(),
            detector=self.detector_type,
            frame_shape=self.frame_shape,
            proposal=int(meta.get("proposalNumber", 0) or 0),
            run=int(meta.get("runNumber", 0) or 0),
            detector_source=self.det.detector_name,
            recorded=recorded,
        )

    def _open_detector(self, run, source, raw):
        from extra_data.components import AGIPD1M

        return AGIPD1M(run, detector_name=source, raw=raw, min_modules=1)

    def _n_frames(self) -> int:
        return int(self.det["image.data"].shape[1])

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for part in self.det.split_trains(frames_per_part=batch_size):
            kd = part["image.data"]
            if kd.shape[1] == 0:
                continue
            try:
                data = kd.ndarray(module_gaps=True, fill_value=np.nan if not self.raw else 0)
            except Exception as exc:
                raise InputDataError(f"cannot read detector frames of trains {part.train_ids[0]}–"
                                     f"{part.train_ids[-1]} (truncated or corrupt file?): {exc}") from None
            if self.raw:
                frames, valid = self._correct_raw(data, kd.cell_id_coordinates())
            else:
                valid = part["image.mask"].ndarray(module_gaps=True, fill_value=0xFFFFFFFF) == 0
                valid &= np.isfinite(data)
                # (module, frame, ...) as read -> (frame, module, ...) views, no copy of 4 MiB/frame
                frames, valid = np.moveaxis(data.astype(np.float32, copy=False), 0, 1), np.moveaxis(valid, 0, 1)
            yield {
                "data": frames,
                "valid": valid,
                "train_id": kd.train_id_coordinates().astype(np.uint64),
                "pulse_id": kd.pulse_id_coordinates().astype(np.uint64),
                "cell_id": kd.cell_id_coordinates().astype(np.uint16),
            }

    def _estimate_dark(self, n_trains: int = 9) -> np.ndarray:
        """Per-memory-cell, per-pixel analog offset: the median over the first ``n_trains`` trains.

        In single-particle runs almost every frame is a blank, so the median is the dark level.
        Read module by module to keep memory bounded; returns ``(16, n_cells, 512, 128)`` float32.
        """
        import extra_data

        first = self.det.select_trains(extra_data.by_index[:n_trains])
        cells = first["image.data"].cell_id_coordinates()
        self._cell_index = {int(c): i for i, c in enumerate(np.unique(cells))}
        dark = np.zeros((16, len(self._cell_index), 512, 128), np.float32)
        for m in range(16):
            one = extra_data.components.AGIPD1M(first.data, raw=True, modules=[m], min_modules=1) \
                if m in first.source_to_modno.values() else None
            if one is None:
                continue
            analog = one["image.data"].ndarray()[0][:, 0]
            for c, i in self._cell_index.items():
                dark[m, i] = np.median(analog[cells == c], axis=0)
        return dark

    def _correct_raw(self, data: np.ndarray, cell_ids: np.ndarray):
        """Quick-look correction of raw AGIPD data: analog ADU minus the per-cell dark, in photons.

        Gain switching is not handled (high-gain frames only): use calibrated data for quantitative
        work. Cells absent from the dark trains are marked invalid.
        """
        if self._dark is None:
            self._dark = self._estimate_dark()
        index = np.array([self._cell_index.get(int(c), -1) for c in cell_ids])
        analog = np.moveaxis(data[:, :, 0] if data.ndim == 5 else data, 0, 1).astype(np.float32)
        frames = (analog - self._dark[:, np.maximum(index, 0)].swapaxes(0, 1)) * np.float32(self.photons_per_adu)
        valid = np.isfinite(frames) & (index >= 0)[:, None, None, None]
        return frames, valid

    def close(self) -> None:
        pass


class JungfrauRunSource(RunSource):
    """Calibrated JUNGFRAU-4M frames (``data.adc``, ``data.mask``): every memory cell of a train
    is a frame, in storage order (``pulse_id`` = position in the train, ``cell_id`` = memory cell)."""

    detector_type = "JUNGFRAU4M"
    frame_shape = (8, 512, 1024)

    def _open_detector(self, run, source, raw):
        from extra_data.components import JUNGFRAU

        if raw:
            raise InputDataError("raw JUNGFRAU data (gain-encoded ADC) are not supported: use the corrected run")
        return JUNGFRAU(run, detector_name=source, raw=False, n_modules=self.frame_shape[0])

    def _n_frames(self) -> int:
        kd = self.det["data.adc"]
        return int(kd.shape[1] * kd.shape[2])

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        cells = self.det["data.adc"].shape[2]
        for part in self.det.split_trains(trains_per_part=max(1, batch_size // cells)):
            try:
                data = part["data.adc"].ndarray(module_gaps=True, fill_value=np.nan)
                mask = part["data.mask"].ndarray(module_gaps=True, fill_value=0xFFFFFFFF)
                source = next(iter(part.source_to_modno))
                cell_ids = part.data[source, "data.memoryCell"].ndarray()
            except Exception as exc:
                raise InputDataError(f"cannot read JUNGFRAU frames of trains {part.train_ids[0]}–"
                                     f"{part.train_ids[-1]} (truncated or corrupt file?): {exc}") from None
            n_modules, n_trains = data.shape[:2]
            # (module, train, cell, y, x) -> (train * cell, module, y, x)
            frames = np.moveaxis(data, 0, 2).reshape(n_trains * cells, n_modules, *data.shape[3:])
            valid = np.moveaxis(mask == 0, 0, 2).reshape(frames.shape) & np.isfinite(frames)
            yield {
                "data": frames.astype(np.float32, copy=False),
                "valid": valid,
                "train_id": np.repeat(np.asarray(part.train_ids, np.uint64), cells),
                "pulse_id": np.tile(np.arange(cells, dtype=np.uint64), n_trains),
                "cell_id": cell_ids.reshape(-1).astype(np.uint16),
            }


#: Run readers by the manifest's ``[input] detector``.
RUN_SOURCES = {cls.detector_type: cls for cls in (RunSource, JungfrauRunSource)}


class CXISource:
    """Patterns from a CXI file (CXIDB layout) as a flat detector; one frame per pseudo-train."""

    def __init__(self, path):
        self.cxi = read_cxi(path)
        n = len(self.cxi)
        if n == 0:
            self.cxi.close()
            raise InputDataError(f"{path} holds no patterns")
        recorded = {k: v for k, v in (("photon_energy_eV", self.cxi.photon_energy_eV),
                                      ("distance_m", self.cxi.distance_m),
                                      ("pixel_size_m", self.cxi.pixel_size_m)) if v}
        self.info = SourceInfo(
            description=str(path),
            train_ids=np.arange(1, n + 1, dtype=np.uint64),  # CXI has no trains: frame i -> train i+1
            n_frames=n,
            detector="flat",
            frame_shape=self.cxi.frame_shape,
            recorded=recorded,
        )

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        n = len(self.cxi)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            try:
                frames, valid = self.cxi.read(start, stop)
            except OSError as exc:
                raise InputDataError(f"cannot read patterns {start}–{stop} of {self.cxi.path}: {exc}") from None
            ids = np.arange(start + 1, stop + 1, dtype=np.uint64)
            yield {"data": frames, "valid": valid, "train_id": ids,
                   "pulse_id": np.zeros(len(ids), np.uint64), "cell_id": np.zeros(len(ids), np.uint16)}

    def close(self) -> None:
        self.cxi.close()
