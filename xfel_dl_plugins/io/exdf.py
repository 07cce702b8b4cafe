"""Streaming writer for HDF5 files in the European XFEL data format (EXDF) that EXtra-data opens.

Layout written (format version 1.0): ``METADATA/`` (format version, dates, proposal/run/sequence,
``dataSources``), ``INDEX/trainId,timestamp,flag``, ``INDEX/{source}/{group}/first,count``,
``INSTRUMENT/{source}/{group}/{key}`` (any number of rows per train, rows in train order),
``CONTROL/{source}/{key}/value,timestamp`` (one row per train) and ``RUN/{source}/{key}/value``.

The file is written as ``<path>.part`` and renamed to ``path`` only by :meth:`ExdfWriter.close`;
:meth:`ExdfWriter.abort` (or an exception inside ``with``) deletes the partial file.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT_VERSION = "1.0"
_ROW_CHUNK = 64  # rows per HDF5 chunk along the first (frame) axis for per-frame keys


def _ascii(values) -> np.ndarray:
    return np.array([v.encode("ascii") for v in values], dtype=object)


class ExdfWriter:
    """Write one EXDF file. Use as a context manager; rows are appended batch by batch."""

    def __init__(
        self,
        path: str | os.PathLike,
        train_ids,
        *,
        proposal: int = 0,
        run: int = 0,
        sequence: int = 0,
        timestamps=None,
        run_type: str = "xfel_dl_plugins",
        sample: str = "",
    ):
        self.path = Path(path)
        self.part_path = self.path.with_name(self.path.name + ".part")
        self._meta = dict(proposal=proposal, run=run, sequence=sequence, run_type=run_type, sample=sample)
        self._instrument_rows: dict[tuple[str, str], list[np.ndarray]] = {}
        self._control_sources: set[str] = set()
        self._run_only_sources: set[str] = set()
        self._seen_trains: list[np.ndarray] = []  # for streams: trains are known only at the end
        self.train_ids = self._timestamps = None
        if train_ids is not None:
            self._set_trains(np.asarray(train_ids, dtype=np.uint64), timestamps)
        self._file = h5py.File(self.part_path, "w")
        self._closed = False

    def _set_trains(self, train_ids: np.ndarray, timestamps=None) -> None:
        if train_ids.ndim != 1 or np.any(np.diff(train_ids.astype(np.int64)) <= 0):
            raise ValueError("train_ids must be a strictly increasing 1D sequence")
        if timestamps is None:
            now_ns = int(datetime.now(timezone.utc).timestamp() * 1e9)
            timestamps = now_ns + np.arange(len(train_ids), dtype=np.uint64) * 100_000_000  # 10 Hz trains
        self.train_ids, self._timestamps = train_ids, np.asarray(timestamps, dtype=np.uint64)

    def declare_trains(self, train_ids) -> None:
        """For a writer made with ``train_ids=None`` (a stream): trains received, with or without rows."""
        self._seen_trains.append(np.asarray(train_ids, dtype=np.uint64))

    def _run_timestamp(self) -> np.ndarray:
        if self._timestamps is not None:
            return self._timestamps[:1]
        return np.array([int(datetime.now(timezone.utc).timestamp() * 1e9)], dtype=np.uint64)

    # -- writing -------------------------------------------------------------------------------
    def append_instrument(self, source: str, data: dict[str, Any], train_ids, *, compress=()) -> None:
        """Append rows (e.g. one per frame) to ``INSTRUMENT/source``.

        ``data`` maps ``group.key`` (e.g. ``image.data``) to arrays whose first axis matches
        ``train_ids``; rows must come in non-decreasing train order across calls. Keys named in
        ``compress`` are stored gzip-compressed (as calibrated files store ``image.mask``/``gain``).
        """
        tids = np.asarray(train_ids, dtype=np.uint64)
        groups: dict[str, int] = {}
        for key, value in data.items():
            value = np.asarray(value)
            if value.shape[:1] != tids.shape:
                raise ValueError(f"{source} {key}: {value.shape[0]} rows for {len(tids)} train IDs")
            group, _, name = key.partition(".")
            if not name:
                raise ValueError(f"key {key!r} must be 'group.name'")
            groups[group] = len(tids)
            self._append_rows(f"INSTRUMENT/{source}/{group}/{name.replace('.', '/')}", value, key in compress)
        for group in groups:
            self._instrument_rows.setdefault((source, group), []).append(tids)
        if self.train_ids is None:
            self._seen_trains.append(tids)

    def _append_rows(self, h5path: str, value: np.ndarray, compress: bool = False) -> None:
        f = self._file
        if value.dtype.kind in "UO":
            value = value.astype(h5py.string_dtype())
        if h5path not in f:
            chunks = (_ROW_CHUNK,) + value.shape[1:]
            if np.prod(chunks) * value.dtype.itemsize > (8 << 20):  # big frames: one row per chunk
                chunks = (1,) + value.shape[1:]
            f.create_dataset(h5path, shape=(0,) + value.shape[1:], maxshape=(None,) + value.shape[1:],
                             dtype=value.dtype, chunks=chunks, **(dict(compression="gzip", compression_opts=1)
                                                                  if compress else {}))
        ds = f[h5path]
        if ds.shape[1:] != value.shape[1:]:
            raise ValueError(f"{h5path}: rows of shape {value.shape[1:]} appended to {ds.shape[1:]}")
        n0 = ds.shape[0]
        ds.resize(n0 + len(value), axis=0)
        ds[n0:] = value

    def write_control(self, source: str, data: dict[str, Any]) -> None:
        """Write slow data, one value per train, to ``CONTROL/source`` (and its first value to RUN)."""
        if self.train_ids is None:
            raise ValueError("CONTROL data needs the train IDs up front")
        for key, value in data.items():
            value = np.asarray(value)
            if len(value) != len(self.train_ids):
                raise ValueError(f"CONTROL {source} {key}: {len(value)} values for {len(self.train_ids)} trains")
            path = key.replace(".", "/")
            self._file.create_dataset(f"CONTROL/{source}/{path}/value", data=value)
            self._file.create_dataset(f"CONTROL/{source}/{path}/timestamp", data=self._timestamps)
            self._file.create_dataset(f"RUN/{source}/{path}/value", data=value[:1])
            self._file.create_dataset(f"RUN/{source}/{path}/timestamp", data=self._timestamps[:1])
        self._control_sources.add(source)

    def write_run_values(self, source: str, data: dict[str, Any]) -> None:
        """Write run-level values (e.g. provenance strings) to ``RUN/source`` only."""
        for key, value in data.items():
            path = key.replace(".", "/")
            arr = np.array([value.encode("utf-8")], dtype=object) if isinstance(value, str) else np.atleast_1d(value)
            dtype = h5py.string_dtype() if isinstance(value, str) else None
            self._file.create_dataset(f"RUN/{source}/{path}/value", data=arr, dtype=dtype)
            self._file.create_dataset(f"RUN/{source}/{path}/timestamp", data=self._run_timestamp())
        self._run_only_sources.add(source)

    # -- finishing -----------------------------------------------------------------------------
    def _write_index(self) -> None:
        f = self._file
        if self.train_ids is None:
            seen = np.concatenate(self._seen_trains) if self._seen_trains else np.zeros(0, np.uint64)
            self._set_trains(np.unique(seen))
        f.create_dataset("INDEX/trainId", data=self.train_ids, dtype="u8")
        f.create_dataset("INDEX/timestamp", data=self._timestamps)
        f.create_dataset("INDEX/flag", data=np.ones(len(self.train_ids), dtype=np.int32))
        for (source, group), chunks in self._instrument_rows.items():
            tids = np.concatenate(chunks) if chunks else np.zeros(0, np.uint64)
            if np.any(np.diff(tids.astype(np.int64)) < 0):
                raise ValueError(f"{source}/{group}: rows are not in train order")
            if len(tids) and not np.all(np.isin(tids, self.train_ids)):
                raise ValueError(f"{source}/{group}: rows for trains not in this file")
            first = np.searchsorted(tids, self.train_ids, side="left").astype(np.uint64)
            last = np.searchsorted(tids, self.train_ids, side="right").astype(np.uint64)
            f.create_dataset(f"INDEX/{source}/{group}/first", data=first)
            f.create_dataset(f"INDEX/{source}/{group}/count", data=last - first)
        for source in self._control_sources:
            n = len(self.train_ids)
            f.create_dataset(f"INDEX/{source}/first", data=np.arange(n, dtype=np.uint64))
            f.create_dataset(f"INDEX/{source}/count", data=np.ones(n, dtype=np.uint64))
        for source in self._run_only_sources - self._control_sources:  # run values only: no rows
            n = len(self.train_ids)
            f.require_group(f"CONTROL/{source}")
            f.create_dataset(f"INDEX/{source}/first", data=np.zeros(n, dtype=np.uint64))
            f.create_dataset(f"INDEX/{source}/count", data=np.zeros(n, dtype=np.uint64))

    def _write_metadata(self) -> None:
        f = self._file
        sources = [f"CONTROL/{s}" for s in sorted(self._control_sources | self._run_only_sources)]
        sources += [f"INSTRUMENT/{s}" for s in sorted({s for s, _ in self._instrument_rows})]
        grp = f.create_group("METADATA/dataSources")
        grp.create_dataset("dataSourceId", data=_ascii(sources), dtype=h5py.string_dtype("ascii"))
        grp.create_dataset("root", data=_ascii([s.split("/", 1)[0] for s in sources]), dtype=h5py.string_dtype("ascii"))
        grp.create_dataset("deviceId", data=_ascii([s.split("/", 1)[1] for s in sources]), dtype=h5py.string_dtype("ascii"))
        now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        strings = {
            "dataFormatVersion": FORMAT_VERSION,
            "creationDate": now,
            "updateDate": now,
            "daqLibrary": "xfel_dl_plugins",
            "karaboFramework": "none",
            "runType": self._meta["run_type"],
            "sample": self._meta["sample"],
        }
        for key, value in strings.items():
            f.create_dataset(f"METADATA/{key}", data=_ascii([value]), dtype=h5py.string_dtype("ascii"))
        for key, name in (("proposalNumber", "proposal"), ("runNumber", "run"), ("sequenceNumber", "sequence")):
            f.create_dataset(f"METADATA/{key}", data=np.array([self._meta[name]], dtype=np.uint32))

    def close(self) -> Path:
        """Finish INDEX and METADATA, then atomically rename the partial file to its final name."""
        if self._closed:
            return self.path
        try:
            self._write_index()
            self._write_metadata()
            self._file.close()
        except BaseException:
            self.abort()
            raise
        os.replace(self.part_path, self.path)
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file: nothing half-written is left looking complete."""
        if self._closed:
            return
        try:
            self._file.close()
        finally:
            self.part_path.unlink(missing_ok=True)
            self._closed = True

    def __enter__(self) -> ExdfWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
