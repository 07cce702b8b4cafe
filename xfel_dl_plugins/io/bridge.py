"""Online input: calibrated AGIPD-1M frames from a karabo-bridge stream (``tcp://host:port``).

The online pipeline (or ``karabo-bridge-serve-files --append-detector-modules`` replaying a run)
sends one message per train; with module appending the detector source ``*/DET/APPEND`` carries
``image.data`` as ``(frames, 16, 512, 128)``, frames first, as this package's batches are.
The stream ends after ``max_trains`` trains, after ``timeout_s`` without data, or on Ctrl-C; the
trains received so far are processed and written.
"""

from __future__ import annotations

import fnmatch
import sys
from typing import Iterator

import numpy as np

from ..errors import InputDataError
from .sources import SourceInfo


class BridgeSource:
    """Frames from a karabo-bridge endpoint, grouped into batches of whole trains."""

    def __init__(self, endpoint: str, *, source: str | None = None, max_trains: int | None = None,
                 timeout_s: float = 30.0):
        from karabo_bridge import Client

        self.client = Client(endpoint, sock="REQ", timeout=timeout_s)
        self.endpoint, self.source_glob, self.max_trains = endpoint, source or "*AGIPD1M*/DET/APPEND", max_trains
        self._first = self._receive()
        if self._first is None:
            raise InputDataError(f"no data from karabo-bridge {endpoint} within {timeout_s:g} s")
        self.info = SourceInfo(description=f"karabo-bridge {endpoint}", train_ids=None, n_frames=None,
                               detector="AGIPD1M", frame_shape=(16, 512, 128),
                               detector_source=self.source.split("/DET/")[0])

    def _receive(self):
        try:
            data, meta = self.client.next()
        except TimeoutError:
            return None
        names = sorted(fnmatch.filter(data, self.source_glob))
        if not names:
            raise InputDataError(f"karabo-bridge {self.endpoint} sends no source matching {self.source_glob} "
                                 f"(sources: {', '.join(sorted(data))})")
        self.source = names[0]
        return data[self.source], meta[self.source]

    def _frames(self, train) -> dict[str, np.ndarray]:
        data, meta = train
        frames = np.asarray(data["image.data"], dtype=np.float32)
        if frames.ndim != 4 or frames.shape[1:] != (16, 512, 128):
            raise InputDataError(f"karabo-bridge {self.source} image.data has shape {frames.shape}, "
                                 "expected (frames, 16, 512, 128) calibrated data")
        valid = np.isfinite(frames)
        if "image.mask" in data:
            valid &= np.asarray(data["image.mask"]) == 0
        n = len(frames)
        tid = int(meta.get("timestamp.tid", data.get("image.trainId", [0])[0]))
        return {"data": frames, "valid": valid, "train_id": np.full(n, tid, np.uint64),
                "pulse_id": np.asarray(data.get("image.pulseId", np.arange(n)), np.uint64).ravel()[:n],
                "cell_id": np.asarray(data.get("image.cellId", np.arange(n)), np.uint16).ravel()[:n]}

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        pending: list[dict[str, np.ndarray]] = []
        train, received = self._first, 0
        try:
            while train is not None:
                pending.append(self._frames(train))
                received += 1
                if sum(len(p["train_id"]) for p in pending) >= batch_size:
                    yield {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
                    pending = []
                if self.max_trains is not None and received >= self.max_trains:
                    break
                train = self._receive()
        except KeyboardInterrupt:
            print("\nstream stopped by the user; writing the trains received so far", file=sys.stderr)
        if pending:
            yield {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}

    def close(self) -> None:
        self.client.__exit__(None, None, None)  # destroys the client's ZMQ context
