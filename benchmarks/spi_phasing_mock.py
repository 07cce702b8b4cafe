"""What `manifests/spi-phasing.toml` gives on sphere hits recorded by AGIPD-1M, and why.

    PYTHONPATH=$PWD python benchmarks/spi_phasing_mock.py OUT_DIR

Writes a mock calibrated AGIPD-1M run (tests/mockruns.py: 32 frames, analytic spheres of R = 33 nm
+-15 %, 3e4 photons per hit, 0.02 background photons per pixel, the example geometry's gaps and
central hole) and runs the manifest on it four times: as measured (no fill, no positivity), with
positivity, with the central hole filled from each frame's sphere fit and positivity but only starts
within 0.15 averaged, and as shipped (starts within 0.4 averaged). For each it prints the support
radius over the true radius, the inner / outer amplitude ratio (a sphere's projection,
sqrt(R^2 - r^2): about 2; hollow: below 1) and the error against that projection (``MOCK_SEED``: the
run's seed, 3 by default), and writes the shipped run's report
(OUT_DIR/report.md, phasing.png). Then, on the brightest hit's grid pattern, it phases from the true
support (a disc of the sphere's radius), without and with positivity: if that fails too, the data
(not the support search) limit the image. ``MOCK_BACKGROUND=0`` removes the background.
"""

import os
import sys
import time
from pathlib import Path

import extra_data
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from mockruns import write_mock_agipd_run  # noqa: E402

from xfel_dl_plugins.phasing import phase  # noqa: E402
from xfel_dl_plugins.pipeline.manifest import apply_overrides, parse_manifest  # noqa: E402
from xfel_dl_plugins.pipeline.runner import Chain, open_source, resolve_geometry, run_chain  # noqa: E402
from xfel_dl_plugins.report import make_report  # noqa: E402
from xfel_dl_plugins.stages.base import FrameBatch  # noqa: E402

RADIUS_NM, PHOTONS = 33.0, 3e4
TRUTH: dict = {}  # (train_id, pulse_id) -> true radius (nm), 0 for blanks
BACKGROUND = float(os.environ.get("MOCK_BACKGROUND", 0.02))  # photons per detector pixel


def grid_pixel_nm(size: int, binning: int) -> float:
    """Real-space pixel of a reconstruction, lambda D / (N p), at 6 keV, 0.705 m, 200 um pixels."""
    return 1.23984e-6 / 6000.0 * 0.705 / (size * binning * 200e-6) * 1e9


def radial_profile(amplitude: np.ndarray, support: np.ndarray, step: int = 4) -> np.ndarray:
    """Mean amplitude in rings of ``step`` px around the support's centre, relative to the maximum."""
    centre = np.array(np.nonzero(support)).mean(axis=1)
    r = np.hypot(*(np.indices(amplitude.shape) - centre[:, None, None]))
    return np.array([amplitude[(r >= k) & (r < k + step)].mean() for k in range(0, 40, step)]) / amplitude.max()


def sphere_error(amplitude: np.ndarray, support: np.ndarray, radius_px: float) -> float:
    """||a - k p|| / ||k p||: the amplitude against a sphere's projection p = sqrt(R^2 - r^2) of the true
    radius, centred on the support, at the best scale k."""
    r = np.hypot(*(np.indices(amplitude.shape) - np.array(np.nonzero(support)).mean(axis=1)[:, None, None]))
    ideal = np.sqrt(np.clip(radius_px ** 2 - r ** 2, 0, None))
    scale = (amplitude * ideal).sum() / (ideal ** 2).sum()
    return float(np.linalg.norm(amplitude - scale * ideal) / np.linalg.norm(scale * ideal))


def inner_over_outer(amplitude: np.ndarray, support: np.ndarray) -> float:
    """Mean amplitude in the central third of the support-equivalent disc over that in its outer third
    (a sphere's projection: about 2; a hollow image: below 1)."""
    radius = np.sqrt(support.sum() / np.pi)
    r = np.hypot(*(np.indices(amplitude.shape) - np.array(np.nonzero(support)).mean(axis=1)[:, None, None]))
    return float(amplitude[r < radius / 3].mean() / amplitude[(r > 2 * radius / 3) & (r < radius)].mean())


def run_manifest(run_dir: Path, out_dir: Path, tag: str, **params):
    """Run spi-phasing.toml (phase_retriever parameters overridden by ``params``); return the result."""
    manifest = apply_overrides(parse_manifest(ROOT / "manifests" / "spi-phasing.toml"), input_path=str(run_dir),
                               output=str(out_dir / f"{tag}.h5"))
    manifest.geometry.photon_energy_eV, manifest.geometry.distance_m = 6000.0, 0.705
    next(s for s in manifest.stages if s.use == "phase_retriever").params.update(params)
    (out_dir / f"{tag}.h5").unlink(missing_ok=True)
    t0 = time.perf_counter()
    result = run_chain(manifest, progress=False)
    phased = extra_data.H5File(str(result.output))[result.output_sources["phasing"]]
    amplitude, support = phased["data.amplitude"].ndarray(), phased["data.support"].ndarray()
    truth = np.array([TRUTH[k] for k in zip(phased["data.support"].train_id_coordinates().tolist(),
                                             phased["data.pulseId"].ndarray().tolist())])
    size_ratio = np.sqrt(support.sum(axis=(1, 2)) / np.pi) * grid_pixel_nm(128, 4) / truth
    shape = [inner_over_outer(a, s) for a, s in zip(amplitude, support)]
    error = [sphere_error(a, s, r / grid_pixel_nm(128, 4)) for a, s, r in zip(amplitude, support, truth)]
    print(f"{tag}: {len(amplitude)} singles phased in {time.perf_counter() - t0:.0f} s (whole chain); support radius / "
          f"true radius median {np.median(size_ratio):.2f}; inner / outer amplitude median {np.median(shape):.2f}; "
          f"error against the sphere's projection median {np.median(error):.3f} (per frame {np.round(error, 2).tolist()})")
    return result


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = out_dir / "r0042"
    TRUTH.update(write_mock_agipd_run(run_dir, n_trains=2, frames_per_train=16, hit_fraction=0.35,
                                      photons_per_hit=PHOTONS, radius_nm=RADIUS_NM, background=BACKGROUND,
                                      seed=int(os.environ.get("MOCK_SEED", 3))))
    run_manifest(run_dir, out_dir, "as-measured", fill_centre=False, positivity=False)
    run_manifest(run_dir, out_dir, "positivity", fill_centre=False)
    run_manifest(run_dir, out_dir, "filled", max_difference=0.15)
    result = run_manifest(run_dir, out_dir, "manifest")
    print(make_report(result.output, out_dir).read_text())
    manifest = apply_overrides(parse_manifest(ROOT / "manifests" / "spi-phasing.toml"), input_path=str(run_dir))
    manifest.geometry.photon_energy_eV, manifest.geometry.distance_m = 6000.0, 0.705

    # the brightest frame's grid pattern, phased from the true support
    source = open_source(manifest.input, None)
    geometry = resolve_geometry(manifest.geometry, source.info)
    chain = Chain(manifest, geometry, "cpu")
    chain.setup()
    grid = next(stage for spec, stage in chain.steps if spec.use == "reciprocal_grid")
    fields = next(iter(source.batches(32)))
    out = grid.process(FrameBatch(fields, geometry))
    brightest = int(np.argmax(out["pattern"].sum(axis=(1, 2))))
    pattern, valid = out["pattern"][brightest], out["pattern_valid"][brightest]
    size = len(pattern)
    r = np.hypot(*(np.indices(pattern.shape) - size // 2))
    print(f"grid {size}^2: valid fraction {valid.mean():.2f}; within 4 / 8 / 15 px of the beam: "
          f"{valid[r <= 4].mean():.2f} / {valid[r <= 8].mean():.2f} / {valid[r <= 15].mean():.2f}")
    true_px = TRUTH[(int(fields["train_id"][brightest]), int(fields["pulse_id"][brightest]))] / grid_pixel_nm(size, grid.p.binning)
    disc = np.fft.ifftshift(r <= true_px)
    iobs, measured = np.fft.ifftshift(pattern)[None], np.fft.ifftshift(valid)[None]
    print(f"a sphere's profile: {np.round(np.sqrt(np.clip(1 - (np.arange(0, 40, 4) + 2) ** 2 / true_px ** 2, 0, None)), 2)}")
    for label, options in (("true support", {}), ("true support + positivity", {"positivity": True}),
                           ("default (shrink-wrap)", None)):
        if options is None:
            res = phase(iobs, measured, n_starts=8, seed=0, device="cpu")
        else:
            res = phase(iobs, measured, recipe="HIO**400 * ER**100", n_starts=4, seed=0, device="cpu",
                        initial_support=disc[None], **options)
        print(f"{label}: free LLK {res.llk_free[0]:.2f}, profile "
              f"{np.round(radial_profile(np.abs(res.reconstruction[0]), res.support[0]), 2)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("spi-phasing-mock"))
