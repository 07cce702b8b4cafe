"""Small European XFEL runs for tests, written with EXtra-data's own mock-run writer.

Pixel data are filled afterwards with h5py: Poisson background everywhere, and sphere diffraction
patterns (absolute form factor, Poisson-sampled) in known pulses.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from extra_data.tests.mockdata import write_file
from extra_data.tests.mockdata.detectors import AGIPDModule

from xfel_dl_plugins.io.geometry import q_from_radius
from xfel_dl_plugins.stages.sizing import sphere_form_factor

PHOTON_ENERGY_EV = 6000.0
DISTANCE_M = 0.705


def agipd_pixel_radius_m():
    """Distance of every AGIPD-1M pixel from the beam axis for the example geometry, (16, 512, 128)."""
    from extra_geom import AGIPD_1MGeometry

    pos = AGIPD_1MGeometry.example().get_pixel_positions()
    return np.hypot(pos[..., 0], pos[..., 1])


def write_mock_agipd_run(run_dir: Path, *, n_trains=6, frames_per_train=16, hit_fraction=0.25,
                         photons_per_hit=3000.0, radius_nm=35.0, background=0.02, seed=0,
                         nan_frame: tuple[int, int] | None = None, modules=range(16), raw=False,
                         adu_per_photon=40.0):
    """Write a calibrated (or, with ``raw``, a raw) AGIPD-1M run; return the truth:
    dict (train_id, pulse_id) -> radius in nm, 0 for blanks.

    Raw data are uint16 analog ADU: a per-pixel, per-memory-cell offset (~5000 ADU, spread 300)
    plus ``adu_per_photon`` per photon, with the gain plane set to 0 (high gain)."""
    rng = np.random.default_rng(seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    first_train = 10000
    n_frames = n_trains * frames_per_train
    is_hit = rng.random(n_frames) < hit_fraction
    radii = np.where(is_hit, radius_nm * rng.uniform(0.85, 1.15, n_frames), 0.0)
    q = q_from_radius(agipd_pixel_radius_m(), DISTANCE_M, PHOTON_ENERGY_EV)
    data = np.empty((n_frames, 16, 512, 128), np.float32)
    for i in range(n_frames):
        expected = np.full(q.shape, background)
        if is_hit[i]:
            profile = sphere_form_factor(q * radii[i] * 1e-9)
            expected = expected + photons_per_hit * profile / profile.sum()
        data[i] = rng.poisson(expected) + rng.normal(0, 0.05, q.shape)  # calibrated: photons + noise
    if nan_frame is not None:
        data[nan_frame[0] * frames_per_train + nan_frame[1]] = np.nan
    cells = np.tile(np.arange(frames_per_train), n_trains)
    for m in modules:
        kind, src, channel = (("RAW", f"SPB_DET_AGIPD1M-1/DET/{m}CH0", "xtdf") if raw
                              else ("CORR", f"SPB_DET_AGIPD1M-1/CORR/{m}CH0", "output"))
        path = run_dir / f"{kind}-R0042-AGIPD{m:02d}-S00000.h5"
        write_file(str(path), [AGIPDModule(src, channel_name=channel, raw=raw, frames_per_train=frames_per_train)],
                   ntrains=n_trains, firsttrain=first_train, chunksize=frames_per_train, format_version="1.0")
        with h5py.File(path, "r+") as f:
            grp = f[f"INSTRUMENT/{src}:{channel}/image"]
            if raw:
                offsets = rng.normal(5000, 300, (frames_per_train, 512, 128))
                adu = np.zeros((n_frames, 2, 512, 128), np.uint16)
                adu[:, 0] = np.clip(offsets[cells] + adu_per_photon * np.nan_to_num(data[:, m]), 0, 65535)
                grp["data"][:n_frames] = adu
            else:
                grp["data"][:n_frames] = data[:, m]
                mask = np.zeros((n_frames, 512, 128), np.uint32)
                mask[:, :, 0] = mask[:, :, -1] = 1  # edge pixels flagged bad, as calibration does
                grp["mask"][:n_frames] = mask
    train_ids = np.repeat(np.arange(first_train, first_train + n_trains), frames_per_train)
    pulse_ids = np.tile(np.arange(frames_per_train), n_trains)
    return {(int(t), int(p)): float(r) for t, p, r in zip(train_ids, pulse_ids, radii)}
