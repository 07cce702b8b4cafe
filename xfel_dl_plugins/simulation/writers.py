"""Write simulations to disk: a labelled CXI dataset, or a European XFEL run of calibrated AGIPD-1M data.

The AGIPD-1M run looks like the output of the offline calibration pipeline (``proc/rNNNN``): one file
per module ``CORR-R{run:04d}-AGIPD{m:02d}-S00000.h5`` with source
``SPB_DET_AGIPD1M-1/CORR/{m}CH0:output`` and keys ``image.data`` (N, 512, 128) float32 in photons
(or keV when ``detector.data_units = "keV"``), ``image.mask`` uint32 (European XFEL bad-pixel bits,
0 = good), ``image.gain`` uint8 (0 high, 1 medium, 2 low gain stage), ``image.pulseId`` uint64,
``image.cellId`` uint16, ``image.trainId`` uint64. The truth sits beside it in
``SIM-R{run:04d}-TRUTH-S00000.h5``: per pulse under ``SPB_XFELDL_SIM/TRUTH/SAMPLE:output``
(``data.hitClass``, ``data.nParticles``, ``data.radiusNm``, ``data.shape``, ``data.orientation``,
``data.photons``, ``data.backgroundPhotons``, ``data.fluence``, ``data.pulseEnergy``, ``data.pulseId``),
an XGM-like ``SA1_XTD2_XGM/XGM/DOOCS:output`` ``data.intensityTD`` (uJ per pulse, 1000 slots per train),
and the beam and detector settings as slow data in ``SPB_XFELDL_SIM/MDL/SETTINGS``
(``photonEnergy`` eV, ``detectorDistance`` m, ...), plus provenance strings (config, seed, geometry).
The pixel geometry is ``extra_geom.AGIPD_1MGeometry.example()`` with the beam at its origin.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..errors import OutputExistsError, XfelDLError
from ..io.cxi import write_cxi
from ..io.exdf import ExdfWriter
from .config import SimulationConfig, load_config
from .detector import AGIPD_MODULE_SHAPE
from .generate import SimulatedPatterns, Simulator, generate, resolve_device
from .parallel import default_workers, map_tasks
from .samples import SHAPE_NAMES

AGIPD_SOURCE = "SPB_DET_AGIPD1M-1/CORR/{m}CH0:output"
TRUTH_SOURCE = "SPB_XFELDL_SIM/TRUTH/SAMPLE:output"
SETTINGS_SOURCE = "SPB_XFELDL_SIM/MDL/SETTINGS"
XGM_SOURCE = "SA1_XTD2_XGM/XGM/DOOCS:output"
XGM_SLOTS = 1000
# European XFEL bad-pixel bits (extra.calibration.BadPixels)
BAD_NOISE_OUT_OF_THRESHOLD = 1 << 1
BAD_VALUE_OUT_OF_RANGE = 1 << 12
BAD_NON_SENSITIVE = 1 << 19
#: Photon values above which the simulated AGIPD reports the medium / low gain stage (6 keV).
GAIN_THRESHOLDS_PHOTONS = (200.0, 4000.0)


def _config(config) -> SimulationConfig:
    return config if isinstance(config, SimulationConfig) else load_config(config)


def write_dataset(path, patterns: SimulatedPatterns) -> Path:
    """Write a grid-detector simulation as CXI: patterns, per-pattern mask (nonzero = bad) and truth
    labels under ``entry_1/sample_1/`` (``projected_density`` too when simulated)."""
    extra = dict(patterns.labels())
    if patterns.projected_density is not None:
        extra["projected_density"] = patterns.projected_density
    extra["shape_names"] = np.array([s.encode() for s in patterns.shape_names])
    extra["class_names"] = np.array([s.encode() for s in patterns.class_names])
    m = patterns.meta
    return write_cxi(path, patterns.patterns, mask=~patterns.valid, distance_m=m["distance_m"],
                     pixel_size_m=m["pixel_size_m"], photon_energy_eV=m["photon_energy_eV"], extra=extra)


def write_agipd_run(run_dir, config, n_trains: int, frames_per_train: int, seed: int = 0, *,
                    first_train_id: int = 10000, run_number: int = 1, proposal: int = 700000,
                    overwrite: bool = False, progress: bool = True, workers: int | None = None,
                    device: str = "cpu") -> Path:
    """Simulate ``n_trains`` x ``frames_per_train`` AGIPD-1M frames into ``run_dir`` (see module doc).

    ``workers`` processes simulate trains in parallel (default: the available cores, at most 4);
    the result does not depend on it. ``device`` as in :func:`generate` (a GPU run uses one process).
    """
    cfg = _config(config)
    cfg = dataclasses.replace(cfg, detector=dataclasses.replace(cfg.detector, kind="agipd1m"))
    if n_trains < 1 or frames_per_train < 1 or frames_per_train > 352:
        raise XfelDLError(f"need n_trains >= 1 and 1 <= frames_per_train <= 352, got {n_trains}, {frames_per_train}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    names = [run_dir / f"CORR-R{run_number:04d}-AGIPD{m:02d}-S00000.h5" for m in range(16)]
    truth_name = run_dir / f"SIM-R{run_number:04d}-TRUTH-S00000.h5"
    existing = [p for p in [*names, truth_name] if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} exists (pass overwrite to replace the run)")
    device = resolve_device(device)
    sim = _run_simulator(cfg, seed)
    static_mask = _static_mask(sim, seed)
    train_ids = first_train_id + np.arange(n_trains, dtype=np.uint64)
    meta = dict(proposal=proposal, run=run_number, sample=cfg.name)
    writers = [ExdfWriter(p, train_ids, **meta) for p in names]
    truth = ExdfWriter(truth_name, train_ids, run_type="xfel_dl_plugins simulation", **meta)
    units = cfg.detector.data_units
    cells = np.arange(frames_per_train, dtype=np.uint16)
    pulses = np.arange(frames_per_train, dtype=np.uint64)
    workers = 1 if device != "cpu" else default_workers() if workers is None else workers
    tasks = [(t * frames_per_train, frames_per_train, seed) for t in range(n_trains)]
    results = map_tasks(_run_simulator, (cfg, seed, device), _simulate_train, tasks, workers)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=n_trains, desc="simulating AGIPD-1M run", unit="train")
    try:
        xgm = np.zeros((n_trains, XGM_SLOTS), np.float32)
        for t, (data, saturated, rows) in enumerate(results):
            tid = np.full(frames_per_train, train_ids[t], np.uint64)
            mask = np.broadcast_to(static_mask, data.shape).copy()
            for j, sat in saturated.items():
                mask[j][sat] |= BAD_VALUE_OUT_OF_RANGE
            gain = (data > GAIN_THRESHOLDS_PHOTONS[0]).view(np.uint8) + (data > GAIN_THRESHOLDS_PHOTONS[1]).view(np.uint8)
            if units == "keV":
                data *= np.float32(cfg.beam.photon_energy_eV / 1000.0)
            for m, w in enumerate(writers):
                w.append_instrument(AGIPD_SOURCE.format(m=m), {
                    "image.data": data[:, m], "image.mask": mask[:, m], "image.gain": gain[:, m],
                    "image.pulseId": pulses, "image.cellId": cells, "image.trainId": tid}, tid,
                    compress=("image.mask", "image.gain"))  # as the calibration pipeline writes them
            truth.append_instrument(TRUTH_SOURCE, _truth_rows(rows, pulses), tid)
            xgm[t, :frames_per_train] = [r["pulse_energy_mJ"] * 1e3 for r in rows]  # XGM sits upstream of the optics
        truth.append_instrument(XGM_SOURCE, {"data.intensityTD": xgm}, train_ids)
        ones = np.ones(n_trains)
        truth.write_control(SETTINGS_SOURCE, {
            "photonEnergy": ones * cfg.beam.photon_energy_eV, "detectorDistance": ones * cfg.detector.distance_m,
            "pulseEnergyMean": ones * cfg.beam.pulse_energy_mJ, "focusFwhm": ones * cfg.beam.focus_fwhm_um * 1e-6,
            "transmission": ones * cfg.beam.transmission})
        truth.write_run_values(SETTINGS_SOURCE + ":provenance", {
            "config": json.dumps(dataclasses.asdict(cfg), default=str), "seed": int(seed),
            "geometry": "extra_geom.AGIPD_1MGeometry.example(), beam at the origin",
            "dataUnits": units, "shapeNames": ",".join(SHAPE_NAMES),
            "classNames": "blank,single,multiple,other"})
    except BaseException:
        for w in [*writers, truth]:
            w.abort()
        raise
    for w in [*writers, truth]:
        w.close()
    return run_dir


def _run_simulator(cfg: SimulationConfig, seed: int, device: str = "cpu") -> Simulator:
    """The AGIPD-1M simulator of a run: the static bad pixels are excluded like gaps."""
    sim = Simulator(cfg, device=device)
    sim.exclude(_static_mask(sim, seed) != 0)
    return sim


def _simulate_train(sim: Simulator, task) -> tuple[np.ndarray, dict, list]:
    first, count, seed = task
    data = np.empty((count, *AGIPD_MODULE_SHAPE), np.float32)
    saturated, rows = {}, []
    for j in range(count):
        r = sim.simulate(first + j, seed)
        data[j] = r.pop("pattern")
        valid = r.pop("valid")
        if r["saturated"]:
            saturated[j] = ~valid & sim.valid
        rows.append(r)
    return data, saturated, rows


def _static_mask(sim: Simulator, seed: int) -> np.ndarray:
    """Per-pixel bad-pixel bits that do not change within a run: beam stop / hole and dead or noisy pixels."""
    mask = np.zeros(AGIPD_MODULE_SHAPE, np.uint32)
    mask[~sim.detector.valid] |= BAD_NON_SENSITIVE  # beam stop / central hole
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**32 - 1,)))
    bad = rng.random(AGIPD_MODULE_SHAPE) < sim.config.detector.bad_pixel_fraction
    mask[bad] |= BAD_NOISE_OUT_OF_THRESHOLD
    return mask


def _truth_rows(rows: list[dict], pulses: np.ndarray) -> dict[str, np.ndarray]:
    col = lambda k, t: np.array([r[k] for r in rows], dtype=t)  # noqa: E731
    return {
        "data.hitClass": col("hit_class", np.int8), "data.nParticles": col("n_particles", np.int16),
        "data.radiusNm": col("radius_nm", np.float32), "data.shape": col("shape", np.int8),
        "data.orientation": col("orientation", np.float32), "data.photons": col("photons", np.float32),
        "data.backgroundPhotons": col("background_photons", np.float32),
        "data.fluence": col("fluence_ph_um2", np.float32), "data.pulseEnergy": col("pulse_energy_mJ", np.float32),
        "data.pulseId": pulses,
    }


def simulate_main(config_path, output_path, progress: bool = True, *, n: int | None = None, seed: int | None = None,
                  overwrite: bool = False, device: str = "cpu", workers: int | None = None) -> Path:
    """``xfel-dl simulate CONFIG.toml --output PATH``: a CXI dataset (grid detector) or, for an
    ``agipd1m`` detector, a run directory. Sizes and seed come from the config's ``[output]`` table."""
    cfg = load_config(config_path)
    output_path = Path(output_path)
    n = cfg.output.n_patterns if n is None else n
    seed = cfg.output.seed if seed is None else seed
    if cfg.detector.kind == "agipd1m":
        per_train = cfg.output.frames_per_train
        return write_agipd_run(output_path, cfg, -(-n // per_train), per_train, seed,
                               first_train_id=cfg.output.first_train_id, run_number=cfg.output.run_number,
                               overwrite=overwrite, progress=progress, device=device, workers=workers)
    if output_path.exists() and not overwrite:
        raise OutputExistsError(f"{output_path} exists (use --overwrite)")
    patterns = generate(cfg, n, seed, projected_density=cfg.output.projected_density, progress=progress,
                        device=device, workers=0 if workers is None else workers)
    return write_dataset(output_path, patterns)
