"""CXI files (the CXIDB layout) of diffraction patterns: reading for input, writing for datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputDataError
from ..physics.constants import ELECTRON_VOLT_J
DATA_PATHS = ("entry_1/data_1/data", "entry_1/instrument_1/detector_1/data")
DETECTOR = "entry_1/instrument_1/detector_1"


@dataclass
class CXIData:
    """An open CXI file: patterns stay on disk and are read in slices."""

    path: Path
    file: h5py.File
    patterns: h5py.Dataset  # (n, H, W), or (H, W) for a file of one pattern
    mask: np.ndarray | None  # (H, W) or (n, H, W); nonzero = bad (CXI convention)
    distance_m: float | None
    pixel_size_m: float | None
    photon_energy_eV: float | None

    def __len__(self) -> int:
        return 1 if self.patterns.ndim == 2 else self.patterns.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.patterns.shape[-2:])

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``start:stop`` as float32 and their validity (True = usable pixel)."""
        if self.patterns.ndim == 2:
            frames = np.asarray(self.patterns[()], dtype=np.float32)[None, :][start:stop]
        else:
            frames = np.asarray(self.patterns[start:stop], dtype=np.float32)
        valid = np.isfinite(frames)
        if self.mask is not None:
            mask = self.mask if self.mask.ndim == 2 else self.mask[start:stop]
            valid &= mask == 0
        return frames, valid

    def close(self) -> None:
        self.file.close()


def _scalar(group: h5py.Group, name: str) -> float | None:
    if name not in group:
        return None
    value = np.asarray(group[name][()], dtype=np.float64).ravel()
    return float(value[0]) if value.size else None


def read_cxi(path: str | Path) -> CXIData:
    """Open a CXI file; raise InputDataError naming what is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"CXI file not found: {path}")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise InputDataError(f"cannot open {path} as HDF5 (truncated or corrupt?): {exc}") from None
    data = next((fh[p] for p in DATA_PATHS if p in fh), None)
    if data is None:
        fh.close()
        raise InputDataError(f"{path} has no pattern data at {' or '.join(DATA_PATHS)}")
    if not isinstance(data, h5py.Dataset) or data.ndim not in (2, 3):
        problem = f"{data.name} has shape {data.shape}" if isinstance(data, h5py.Dataset) else f"{data.name} is a group"
        fh.close()
        raise InputDataError(f"{path}: {problem}, expected patterns (n, H, W) or one pattern (H, W)")
    det = fh.get(DETECTOR, {})
    mask = np.asarray(det["mask"][()]) if "mask" in det else None
    if mask is not None and mask.shape not in (data.shape[-2:], data.shape):
        shape = data.shape
        fh.close()
        raise InputDataError(f"{path}: mask shape {mask.shape} does not match patterns {shape}")
    energy_j = _scalar(fh, "entry_1/instrument_1/source_1/energy")
    return CXIData(
        path=path,
        file=fh,
        patterns=data,
        mask=mask,
        distance_m=_scalar(det, "distance") if det else None,
        pixel_size_m=_scalar(det, "x_pixel_size") if det else None,
        photon_energy_eV=energy_j / ELECTRON_VOLT_J if energy_j else None,
    )


def write_cxi(
    path: str | Path,
    patterns: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    distance_m: float,
    pixel_size_m: float,
    photon_energy_eV: float,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write patterns ``(n, H, W)`` in the CXIDB layout (written to ``.part``, then renamed).

    ``mask`` is ``(H, W)`` or ``(n, H, W)``, nonzero = bad pixel; ``extra`` holds per-pattern arrays
    (labels, truth) stored under ``entry_1/sample_1/<name>``.
    """
    path = Path(path)
    part = path.with_name(path.name + ".part")
    patterns = np.asarray(patterns)
    try:
        with h5py.File(part, "w") as fh:
            fh.attrs["cxi_version"] = 150
            fh.create_dataset("entry_1/data_1/data", data=patterns, chunks=(1,) + patterns.shape[1:], compression="gzip", compression_opts=1)
            det = fh.create_group(DETECTOR)
            fh["entry_1/instrument_1/detector_1/data"] = fh["entry_1/data_1/data"]  # hard link, as CXIDB files do
            det["distance"] = float(distance_m)
            det["x_pixel_size"] = float(pixel_size_m)
            det["y_pixel_size"] = float(pixel_size_m)
            if mask is not None:
                det.create_dataset("mask", data=np.asarray(mask).astype(np.uint32), compression="gzip", compression_opts=1)
            fh["entry_1/instrument_1/source_1/energy"] = float(photon_energy_eV) * ELECTRON_VOLT_J
            for name, values in (extra or {}).items():
                fh.create_dataset(f"entry_1/sample_1/{name}", data=np.asarray(values))
        part.replace(path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return path
