"""Contract of the phase_retriever stage."""

import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import frame_keys
from xfel_dl_plugins.errors import StageError
from xfel_dl_plugins.phasing import metrics
from xfel_dl_plugins.phasing.defaults import DEFAULT_RECIPE, DEFAULT_RUNS, SINGLE_FINAL_RECIPE
from xfel_dl_plugins.phasing.testobjects import beam_stop_mask, diffraction, make_object
from xfel_dl_plugins.stages.base import FrameBatch, StageContext
from xfel_dl_plugins.stages.phase_retrieval import PhaseRetriever

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


def _batch(n=2, seed=0, grid=None, stop=1.0):
    """Patterns as reciprocal_grid delivers them: beam centre at [size//2, size//2]."""
    rng = np.random.default_rng(seed)
    truths, patterns, valids = [], [], []
    for i in range(n):
        obj = make_object((SIZE, SIZE), "polygon", rng=rng)
        iobs, valid, truth = diffraction(obj, 1e8, beam_stop_mask((SIZE, SIZE), stop), rng)
        truths.append(truth)
        patterns.append(np.fft.fftshift(iobs))
        valids.append(np.fft.fftshift(valid))
    fields = {"pattern": np.stack(patterns), "pattern_valid": np.stack(valids),
              "train_id": np.arange(n), "pulse_id": np.zeros(n), "cell_id": np.zeros(n)}
    return FrameBatch(fields, meta={"grid": grid} if grid else {}), truths


def test_declaration():
    assert PhaseRetriever.kind == "phase_retriever"
    assert PhaseRetriever.inputs == ("pattern", "pattern_valid")
    names = {f.name for f in PhaseRetriever.outputs}
    assert {"amplitude", "phase", "support", "llk", "llk_free", "r_factor", "resolution_px", "resolution_nm",
            "prtf", "starts_averaged", "starts_agreeing"} <= names
    assert all("complex" not in f.dtype for f in PhaseRetriever.outputs)
    assert "cpu" in PhaseRetriever.devices and "cuda" in PhaseRetriever.devices


def test_process_reconstructs_and_fills_every_output():
    grid = SimpleNamespace(wavelength_m=2.0e-10, distance_m=0.7, pixel_size_m=2e-4)
    stage = PhaseRetriever(StageContext(device="cpu", seed=1), size=SIZE, n_starts=6, n_keep=3)
    stage.setup()
    batch, truths = _batch(2, grid=grid)
    out = stage.process(batch)
    shapes = stage.output_shapes()
    for f in stage.outputs:
        assert out[f.name].shape == (2,) + shapes[f.name] and out[f.name].dtype == np.dtype(f.dtype), f.name
    for i, truth in enumerate(truths):
        recon = out["amplitude"][i] * np.exp(1j * out["phase"][i])
        assert metrics.ambiguity_error(truth, recon) < 0.2
        assert out["support"][i].sum() > 0
    assert np.isfinite(out["llk"]).all() and np.isfinite(out["llk_free"]).all()
    assert (out["r_factor"] < 0.3).all()
    pixel_nm = 2.0e-10 * 0.7 / (SIZE * 2e-4) * 1e9
    np.testing.assert_allclose(out["resolution_nm"], out["resolution_px"] * pixel_nm, rtol=1e-5)
    assert np.isfinite(out["prtf"][:, 1:20]).all()
    assert ((out["starts_averaged"] >= 1) & (out["starts_averaged"] <= 3)).all()
    assert ((out["starts_agreeing"] >= 1) & (out["starts_agreeing"] <= 3)).all()
    summary = stage.finish()
    assert summary["patterns_phased"] == summary["patterns_resolved"] == 2 and summary["device"] == "cpu"
    assert summary["patterns_reproduced"] == int((out["starts_agreeing"] > 1).sum())
    # positivity = "auto", the default: these uniform polygons came out as real, non-negative densities
    assert out["positivity"].tolist() == [1, 1] and summary["patterns_positive"] == 2
    alone = 2 - summary["patterns_reproduced"]
    assert stage.warnings() == ([f"{alone} of 2 phased patterns were reproduced by no other start (starts_agreeing = 1): "
                                 "check them, each image rests on a single start"] if alone else [])


def test_a_beam_stop_that_hides_parts_of_the_object_gets_a_warning():
    """A 1-px beam stop hides no mode of these 64^2 polygons (the largest unmeasured fraction of the
    true support's modes is 0.35); a 5-px one hides several beyond 0.95: the run says so."""
    summaries = {}
    for stop in (1.0, 5.0):
        stage = PhaseRetriever(StageContext(device="cpu", seed=1), size=SIZE, n_starts=2, n_keep=1,
                               recipe="(SW*HIO**20)**3 * ER**20", positivity=False)
        stage.setup()
        stage.process(_batch(3, stop=stop)[0])
        summaries[stop] = stage.finish()
        hidden_lines = [w for w in stage.warnings() if "modes of a typical support" in w]
        assert len(hidden_lines) == (summaries[stop]["hidden_modes"] > 0)
    assert summaries[1.0]["hidden_modes"] == 0 and summaries[1.0]["largest_hidden_fraction"] < 0.8
    assert summaries[5.0]["hidden_modes"] >= 2 and summaries[5.0]["largest_hidden_fraction"] > 0.95
    assert hidden_lines[0].startswith(f"the unmeasured pixels near the beam (beam stop, gaps) hide {summaries[5.0]['hidden_modes']} modes")
    assert hidden_lines[0].endswith("fill_centre or positivity would constrain them in part")


@pytest.mark.parametrize("positivity, expected", [(False, [0, 0]), (True, [1, 1]), ("auto", [1, 1])])
def test_the_positivity_output_says_how_each_frame_was_phased(positivity, expected):
    stage = PhaseRetriever(StageContext(device="cpu", seed=1), size=SIZE, n_starts=4, n_keep=2,
                           recipe="(SW*HIO**40)**5 * ER**50", positivity=positivity)
    stage.setup()
    batch, truths = _batch(2)
    out = stage.process(batch)
    assert out["positivity"].tolist() == expected  # "auto": uniform polygons are real, non-negative densities
    assert stage.finish()["patterns_positive"] == sum(expected)
    for i, truth in enumerate(truths):
        assert metrics.ambiguity_error(truth, out["amplitude"][i] * np.exp(1j * out["phase"][i])) < 0.1


def test_bad_parameters_and_inputs():
    with pytest.raises(StageError, match="parameter 'positivity' must be a boolean or 'auto', got str 'yes'"):
        PhaseRetriever(size=SIZE, positivity="yes")
    with pytest.raises(StageError, match="phase_retriever: positivity = 'auto' .* cannot be combined with reality"):
        PhaseRetriever(size=SIZE, positivity="auto", reality=True).setup()
    with pytest.raises(StageError, match="positivity = 'auto' needs n_starts >= 2"):
        PhaseRetriever(size=SIZE, positivity="auto", n_starts=1, n_keep=1).setup()
    with pytest.raises(StageError, match="n_keep"):
        PhaseRetriever(size=SIZE, n_starts=2, n_keep=3).setup()
    with pytest.raises(StageError, match="unknown operator 'HOI'"):
        PhaseRetriever(size=SIZE, recipe="HOI**50").setup()
    with pytest.raises(StageError, match="support_init"):
        PhaseRetriever(size=SIZE, support_init=[0.5, 0.1]).setup()
    with pytest.raises(StageError, match="n_starts"):
        PhaseRetriever(size=SIZE, n_starts=0)
    stage = PhaseRetriever(size=32, n_starts=2, n_keep=1, recipe="HIO**5*ER**5")
    stage.setup()
    batch, _ = _batch(1)
    with pytest.raises(StageError, match=r"\(n, 32, 32\)"):
        stage.process(batch)


def test_frames_without_valid_pixels_or_photons_get_nan_not_an_error():
    stage = PhaseRetriever(size=SIZE, n_starts=2, n_keep=1, recipe="HIO**20*ER**10")
    stage.setup()
    batch, _ = _batch(3)
    batch.fields["pattern_valid"][1] = False
    batch.fields["pattern"][2] = 0  # a blank frame
    out = stage.process(batch)
    assert np.isfinite(out["llk"][0]) and np.isnan(out["llk"][1:]).all() and out["support"][1:].sum() == 0
    assert out["starts_averaged"][0] == 1 and (out["starts_averaged"][1:] == 0).all()  # n_keep = 1
    np.testing.assert_array_equal(out["starts_agreeing"], out["starts_averaged"])
    assert stage.warnings() == ["2 frames not phased: no photon on a valid pixel (blank or fully masked)"]
    assert stage.finish()["patterns_phased"] == 1


def test_module_does_not_import_cupy_or_torch():
    code = ("import sys, xfel_dl_plugins.stages.phase_retrieval as m; m.PhaseRetriever(size=32).setup(); "
            "print('cupy' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_manifest_runs_grid_then_phasing():
    manifest = tomllib.loads((ROOT / "manifests" / "cdi-phasing.toml").read_text())
    uses = [s["use"] for s in manifest["stages"]]
    assert uses == ["reciprocal_grid", "phase_retriever"]
    assert "cxi" in manifest["input"]
    grid_size = manifest["stages"][0]["params"]["size"]
    params = manifest["stages"][1]["params"]
    assert params["size"] == grid_size
    assert params["recipe"] == DEFAULT_RECIPE  # the manifest writes the package's defaults out
    assert params["runs"] == DEFAULT_RUNS == PhaseRetriever.params["runs"].default
    PhaseRetriever(**params).setup()  # every parameter is valid


def test_spi_manifest_keeps_the_recipe_without_the_final_choice_and_one_run():
    """The SPI manifest keeps one final stage and one run: the default's choice of a sharper support cost
    sphere hits 0.017-0.032 of error on the mock run (docs/benchmarks.md, "The tight fine branch"), and
    a second run 0.004 at twice the time ("Two independent runs")."""
    manifest = tomllib.loads((ROOT / "manifests" / "spi-phasing.toml").read_text())
    params = next(s["params"] for s in manifest["stages"] if s["use"] == "phase_retriever")
    assert params["recipe"] == SINGLE_FINAL_RECIPE != DEFAULT_RECIPE
    assert params["runs"] == 1 != DEFAULT_RUNS
    PhaseRetriever(**params).setup()


def test_results_do_not_depend_on_how_frames_are_batched():
    """Random starts come from (seed, trainId, pulseId): one batch of 3 or three batches of 1 agree."""
    batch, _ = _batch(3)
    stage = PhaseRetriever(StageContext(device="cpu", seed=2), size=SIZE, n_starts=2, n_keep=1, recipe="(SW*HIO**15)**2*ER**10")
    stage.setup()
    together = stage.process(batch)["amplitude"]
    for i in range(3):
        one = FrameBatch({k: v[i:i + 1] for k, v in batch.fields.items()})
        np.testing.assert_allclose(stage.process(one)["amplitude"][0], together[i], atol=1e-5 * together[i].max())


def test_runs_reach_phase_and_every_frame_comes_from_one_of_the_runs(monkeypatch):
    """``runs`` reaches phase() as n_runs, and with 2 every frame is run 0's or run 1's result (which run a
    frame keeps, the lower BIC, test_independent_runs_keep_per_pattern_the_run_with_the_lowest_bic checks)."""
    from xfel_dl_plugins import phasing

    batch, _ = _batch(3, stop=2.0)
    options = dict(size=SIZE, n_starts=2, n_keep=1, recipe="(SW*HIO**15)**2*ER**10")
    seen = []
    phase = phasing.phase
    monkeypatch.setattr(phasing, "phase", lambda *a, **k: seen.append(k["n_runs"]) or phase(*a, **k))
    out = {}
    for runs in (1, 2):
        stage = PhaseRetriever(StageContext(device="cpu", seed=2), runs=runs, **options)
        stage.setup()
        out[runs] = stage.process(batch)
    assert seen == [1, 2]
    run1 = [phase(np.fft.ifftshift(batch["pattern"][i:i + 1], axes=(-2, -1)),
                  np.fft.ifftshift(batch["pattern_valid"][i:i + 1], axes=(-2, -1)), recipe=options["recipe"],
                  n_starts=2, n_keep=1, seed=2, pattern_keys=[(i, 0)], positivity="auto", device="cpu", run=1)
            for i in range(3)]
    for i in range(3):  # each frame: run 0 (runs = 1) or run 1, whichever the result's BIC preferred
        assert any(np.allclose(out[2]["llk"][i], candidate) for candidate in (out[1]["llk"][i], run1[i].llk[0]))
    with pytest.raises(StageError, match="runs"):
        PhaseRetriever(size=SIZE, runs=0)


def test_spi_phasing_manifest_phases_the_single_hits_the_classifier_kept(tmp_path):
    """Hit finder -> classifier (filter) -> grid -> phase_retriever on a mock calibrated AGIPD-1M run of
    sphere hits: exactly the frames kept as single hits are phased; with the central hole filled from
    the sphere fit, they come out as discs of the spheres' size, densest in the middle."""
    import extra_data

    from mockruns import write_mock_agipd_run
    from xfel_dl_plugins.pipeline.manifest import apply_overrides, parse_manifest
    from xfel_dl_plugins.pipeline.runner import run_chain

    truth = write_mock_agipd_run(tmp_path / "r0042", n_trains=2, frames_per_train=16, hit_fraction=0.35,
                                 photons_per_hit=3e4, radius_nm=33.0, seed=3)
    manifest = apply_overrides(parse_manifest(ROOT / "manifests" / "spi-phasing.toml"),
                               input_path=str(tmp_path / "r0042"), output=str(tmp_path / "phased.h5"))
    manifest.geometry.photon_energy_eV, manifest.geometry.distance_m = 6000.0, 0.705
    phasing = next(s for s in manifest.stages if s.use == "phase_retriever")
    phasing.params.update(n_starts=4, recipe="(SW*HIO**40)**8 * ER**50")  # shorter than the manifest's, for the test
    result = run_chain(manifest, progress=False)
    results = extra_data.H5File(str(result.output))
    kept = results[result.output_sources["classifier"]]
    phased = results[result.output_sources["phasing"]]
    singles = kept["data.is_single"].ndarray().astype(bool)
    assert singles.sum() >= 6
    assert frame_keys(phased) == [k for k, s in zip(frame_keys(kept), singles) if s]
    support = phased["data.support"].ndarray()
    assert np.isfinite(phased["data.llk"].ndarray()).all() and (support.sum(axis=(1, 2)) > 0).all()
    pixel_nm = 1.23984e-6 / 6000.0 * 0.705 / (128 * 4 * 200e-6) * 1e9  # lambda D / (N p) of the grid
    radius_nm = np.sqrt(support.sum(axis=(1, 2)) / np.pi) * pixel_nm
    ratio = radius_nm / np.array([truth[k] for k in frame_keys(phased)])
    assert 0.8 < np.median(ratio) < 1.2, ratio
    assert (phased["data.centre_filled"].ndarray() > 0).all()
    # a sphere's projected density falls from the middle outwards: the central third is brighter than
    # the outer third (the full manifest gives ~2.0; phased as measured, 0.97, or 0.08 with positivity)
    amplitude = phased["data.amplitude"].ndarray()
    inner_over_outer = []
    for a, s, r in zip(amplitude, support, radius_nm / pixel_nm):
        rr = np.hypot(*(np.indices(a.shape) - np.array(np.nonzero(s)).mean(axis=1)[:, None, None]))
        inner_over_outer.append(a[rr < r / 3].mean() / a[(rr > 2 * r / 3) & (rr < r)].mean())
    assert np.median(inner_over_outer) > 1.5, inner_over_outer
    np.testing.assert_allclose(phased["data.resolution_nm"].ndarray(),
                               phased["data.resolution_px"].ndarray() * pixel_nm, rtol=1e-3)
    from xfel_dl_plugins.report import make_report

    text = make_report(result.output, tmp_path).read_text()  # both sections: hit finding and phasing
    assert "## Hit finding" in text and f"- frames phased: {singles.sum()} of {singles.sum()}" in text
    assert (tmp_path / "report.png").is_file() and (tmp_path / "phasing.png").stat().st_size > 20_000


def test_fill_centre_fills_the_hole_of_sphere_like_frames_only():
    """A sphere pattern with a central hole gets the hole filled from its sphere fit (close to the true
    intensities); a flat, speckle-free frame (no sphere fits it) is phased as measured, with a warning."""
    from xfel_dl_plugins.io.geometry import ExperimentGeometry
    from xfel_dl_plugins.stages.preprocessing import ReciprocalGrid
    from xfel_dl_plugins.stages.sizing import sphere_form_factor

    size = 64
    geometry = ExperimentGeometry.flat((size, size), pixel_size_m=8e-4, photon_energy_eV=6000, distance_m=0.705,
                                       beam_centre=(size // 2, size // 2))
    grid_stage = ReciprocalGrid(size=size, binning=1)
    grid_stage.context.geometry = geometry
    grid_stage.setup()
    q = grid_stage.info.q.astype(np.float64)
    rng = np.random.default_rng(0)
    sphere = 3e4 * sphere_form_factor(q * 33e-9)
    frames = rng.poisson(np.stack([sphere, np.full(q.shape, 5.0)])).astype(np.float32)
    hole = np.hypot(*(np.indices(q.shape) - size // 2)) <= 4
    fields = {"data": frames, "valid": np.broadcast_to(~hole, frames.shape).copy(),
              "train_id": np.array([1, 1]), "pulse_id": np.array([0, 1]), "cell_id": np.zeros(2)}
    batch = FrameBatch(fields, geometry, {})
    batch.fields.update(grid_stage.process(batch))
    stage = PhaseRetriever(StageContext(device="cpu"), size=size, n_starts=2, n_keep=1, recipe="HIO**20*ER**10",
                           fill_centre=True)
    stage.setup()
    out = stage.process(batch)
    assert np.isfinite(out["llk"]).all() and out["centre_filled"][0] > 0 and out["centre_filled"][1] == 0
    assert any(line.startswith("1 frames with a central hole phased without filling it") for line in stage.warnings())
    patterns, filled = stage._fill_centre(batch, batch["pattern"], batch["pattern_valid"])
    was_filled = filled[0]  # the hole up to the first ring that is half measured
    assert not filled[1].any() and 0.7 * hole.sum() <= was_filled.sum() <= hole.sum()
    assert not (was_filled & ~hole).any() and not (was_filled & batch["pattern_valid"][0]).any()
    np.testing.assert_allclose(patterns[0][was_filled].sum(), sphere[was_filled].sum(), rtol=0.15)
    assert out["centre_filled"].tolist() == filled.sum(axis=(1, 2)).tolist()
