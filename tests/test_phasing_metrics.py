"""Metrics of xfel_dl_plugins.phasing.metrics on cases with known answers."""

import numpy as np
import pytest
import scipy.fft as sfft

from xfel_dl_plugins.errors import InputDataError
from xfel_dl_plugins.phasing import metrics
from xfel_dl_plugins.phasing.testobjects import make_object


def _shift(obj, shift):
    """Fourier (sub-pixel, periodic) translation of obj by ``shift`` pixels."""
    return sfft.ifftn(sfft.fftn(obj) * metrics._phase_ramp(obj.shape, np.asarray(shift, float)))


@pytest.fixture(scope="module")
def obj():
    return make_object((64, 64), "complex_blobs", rng=np.random.default_rng(3)).astype(np.complex128)


def test_r_factor_known_values():
    valid = np.ones(2, bool)
    assert metrics.r_factor(np.array([1.0, 4.0]), np.array([1.0, 4.0]), valid) == pytest.approx(0.0)
    # Scale-invariant: the best k removes a global factor.
    assert metrics.r_factor(np.array([1.0, 4.0]), np.array([9.0, 36.0]), valid) == pytest.approx(0.0, abs=1e-12)
    # ao = [1, 2], ac = [1, 1] -> k = 1.5, R = (0.5 + 0.5) / 3.
    assert metrics.r_factor(np.array([1.0, 4.0]), np.array([1.0, 1.0]), valid) == pytest.approx(1 / 3)
    # Invalid pixels are ignored.
    assert metrics.r_factor(np.array([1.0, 4.0, 100.0]), np.array([1.0, 4.0, 0.0]),
                            np.array([True, True, False])) == pytest.approx(0.0)


def test_poisson_llk_known_values():
    valid = np.ones(2, bool)
    assert metrics.poisson_llk(np.array([3.0, 5.0]), np.array([3.0, 5.0]), valid) == pytest.approx(0.0)
    # 2[(1 - 0)] + 2[1 - 2 + 2 ln 2], averaged over 2 pixels.
    expected = (2.0 + 2 * (1 - 2 + 2 * np.log(2))) / 2
    assert metrics.poisson_llk(np.array([0.0, 2.0]), np.array([1.0, 1.0]), valid) == pytest.approx(expected)
    # Degrees of freedom: n_params reduces the denominator.
    assert metrics.poisson_llk(np.array([0.0, 2.0]), np.array([1.0, 1.0]), valid, n_params=1) == pytest.approx(2 * expected)


def test_poisson_llk_of_the_truth_is_one_at_high_counts():
    rng = np.random.default_rng(0)
    expected = rng.uniform(50, 500, 20000)
    counts = rng.poisson(expected).astype(float)
    llk = metrics.poisson_llk(counts, expected, np.ones(counts.shape, bool))
    assert llk == pytest.approx(1.0, abs=0.05)
    # A 10% wrong model is far above the noise floor.
    assert metrics.poisson_llk(counts, expected * 1.1, np.ones(counts.shape, bool)) > 3


def test_register_translation_subpixel(obj):
    shift = np.array([2.3, -5.65])
    moved = _shift(obj, shift)
    found = metrics.register_translation(sfft.fftn(obj), sfft.fftn(moved), upsample=20)
    # found moves `moved` back onto `obj`.
    np.testing.assert_allclose(found, -shift, atol=0.06)


def test_ambiguity_error_removes_shift_phase_and_twin(obj):
    twin = np.conj(np.roll(obj[::-1, ::-1], 1, axis=(0, 1)))  # rho(-r)* on the periodic grid
    variant = 0.7 * np.exp(1.1j) * _shift(twin, (3.4, -7.2))
    assert metrics.ambiguity_error(obj, variant) < 2e-3
    alignment = metrics.align_to_reference(obj, variant)
    assert alignment.twin
    np.testing.assert_allclose(metrics.aligned_real_space(alignment), obj, atol=2e-3 * np.abs(obj).max())
    # A different object stays far.
    other = make_object((64, 64), "polygon", rng=np.random.default_rng(9))
    assert metrics.ambiguity_error(obj, other) > 0.5
    # Noise of known relative size gives that error.
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(obj.shape) + 1j * rng.standard_normal(obj.shape)
    noise *= 0.05 * np.linalg.norm(obj) / np.linalg.norm(noise)
    assert metrics.ambiguity_error(obj, obj + noise) == pytest.approx(0.05, rel=0.1)
    with pytest.raises(InputDataError):
        metrics.ambiguity_error(obj, obj[:32])


def test_prtf_cutoff_where_phases_become_random(obj):
    rng = np.random.default_rng(2)
    f = sfft.fftn(obj)
    iobs = np.abs(f) ** 2
    shell, freq = metrics.radial_shells(obj.shape)
    radius = np.sqrt(sum(g ** 2 for g in np.meshgrid(*[np.fft.fftfreq(n) for n in obj.shape], indexing="ij")))
    runs = []
    for _ in range(40):
        noise = np.where(radius > 0.25, np.exp(2j * np.pi * rng.random(obj.shape)), 1)
        runs.append(f * noise)
    for normalise in ("model", "data"):
        curve = metrics.prtf(np.stack(runs), iobs, np.ones(obj.shape, bool), normalise=normalise)
        low = curve.value[(curve.frequency > 0.02) & (curve.frequency < 0.24)]
        np.testing.assert_allclose(low, 1.0, atol=1e-6)
        assert np.nanmax(curve.value[curve.frequency > 0.27]) < 0.4
        assert 0.24 <= curve.cutoff_frequency <= 0.27
        assert curve.resolution_px == pytest.approx(1 / (2 * curve.cutoff_frequency))
    # Runs that agree but are scaled differently from the data: only the model normalisation stays at 1.
    scaled = metrics.prtf(np.stack([f * 2, f * 2]), iobs, np.ones(obj.shape, bool))
    assert np.allclose(scaled.value[1:20], 1.0)
    # With only 4 runs the textbook PRTF of random phases stays near 1/sqrt(4); the unbiased one is ~0.
    few = np.stack(runs[:4])
    high = curve.frequency > 0.3
    assert np.nanmean(metrics.prtf(few, iobs, np.ones(obj.shape, bool), normalise="data").value[high]) > 0.35
    assert np.nanmean(metrics.prtf(few, iobs, np.ones(obj.shape, bool)).value[high]) < 0.2
    with pytest.raises(InputDataError):
        metrics.prtf(np.stack(runs), iobs, np.ones(obj.shape, bool), normalise="median")


def test_frc_identical_noisy_and_threshold(obj):
    same = metrics.frc(obj, obj)
    assert np.allclose(same.value[np.isfinite(same.value)], 1.0)
    rng = np.random.default_rng(4)
    a = rng.standard_normal((64, 64))
    b = rng.standard_normal((64, 64))
    indep = metrics.frc(a, b)
    assert np.nanmean(indep.value[indep.frequency > 0.1]) < 0.2
    assert metrics.half_bit_threshold(np.array([1]))[0] == pytest.approx(1.0, abs=1e-3)
    assert metrics.half_bit_threshold(np.array([1e12]))[0] == pytest.approx(0.2071 / 1.2071, abs=1e-4)
    # An image correlated only at low resolution crosses the half-bit curve in between.
    smooth = sfft.ifftn(sfft.fftn(a) * (metrics.radial_shells(a.shape)[0] < 16)).real
    partial = metrics.frc(smooth + 0.01 * b, smooth + 0.01 * a)
    assert 0.2 < partial.cutoff_frequency < 0.3


def test_missing_mode_fractions_known_cases():
    """One unmeasured pixel: its one mode holds support / array of the power (a DFT row restricted
    to the support); a support of the whole array leaves every unmeasured pixel's mode invisible;
    otherwise the values equal a brute-force concentration problem built from explicit DFT rows."""
    n = 24
    one_missing = np.ones((n, n), bool)
    one_missing[0, 0] = False
    box = np.zeros((n, n), bool)
    box[:6, :10] = True
    np.testing.assert_allclose(metrics.missing_mode_fractions(box, one_missing), [60 / n ** 2])
    stop = np.ones((n, n), bool)
    stop[:2, :3] = False
    np.testing.assert_allclose(metrics.missing_mode_fractions(np.ones((n, n), bool), stop), np.ones(6))
    stop[-2:, :2] = False
    support = np.zeros((n, n), bool)
    support[4:14, 3:17] = True
    rows = sfft.fftn(np.eye(n * n)[support.ravel()].reshape(-1, n, n), axes=(1, 2)) / n  # unitary DFT of each support pixel
    unmeasured = rows.reshape(len(rows), -1)[:, (~stop).ravel()].T
    brute = np.sort(np.linalg.eigvalsh(unmeasured @ unmeasured.conj().T))[::-1]
    fractions = metrics.missing_mode_fractions(support, stop)
    np.testing.assert_allclose(fractions, brute, atol=1e-9)
    assert metrics.unconstrained_modes(support, stop) == int((brute > 0.5).sum()) >= 1
    assert metrics.unconstrained_modes(support, np.ones((n, n), bool)) == 0
    with pytest.raises(InputDataError, match="differ in shape"):
        metrics.missing_mode_fractions(support, stop[:-1])
    volume_missing = np.ones((8, 8, 8), bool)  # 3D: one unmeasured voxel, a 2 x 3 x 4 support
    volume_missing[0, 0, 0] = False
    volume_support = np.zeros((8, 8, 8), bool)
    volume_support[:2, :3, :4] = True
    np.testing.assert_allclose(metrics.missing_mode_fractions(volume_support, volume_missing), [24 / 8 ** 3])


def test_a_larger_beam_stop_hides_more_of_the_object():
    """The same object and support: a 4-px beam stop leaves modes almost invisible that a 2-px one measures."""
    from xfel_dl_plugins.phasing.testobjects import beam_stop_mask

    support = np.abs(make_object((128, 128), "cell", rng=np.random.default_rng(1))) > 0.01
    small, large = (metrics.missing_mode_fractions(support, beam_stop_mask((128, 128), r)) for r in (1.5, 4.0))
    assert large[0] > 0.95 > small[0] and metrics.unconstrained_modes(support, beam_stop_mask((128, 128), 4.0)) >= 3


def test_unmeasured_excess_flags_stripes_in_a_gap():
    """The true object continues the data across a gap (excess about 1); one with stripes along the gap
    (power put into its free Fourier components) is many times brighter there; a beam stop alone has no
    pixels to judge (its central speckle is bright by nature)."""
    from xfel_dl_plugins.phasing.testobjects import beam_stop_mask, diffraction

    rng = np.random.default_rng(5)
    truth_obj = make_object((128, 128), "blobs", rng=rng)
    gap = beam_stop_mask((128, 128), 2.0, gap_width=3)
    iobs, valid, truth = diffraction(truth_obj, 1e8, gap, rng)
    stripes = np.zeros(truth.shape, np.complex128)
    stripes[0, :] = np.abs(sfft.fftn(truth)).mean() * 30 * np.exp(2j * np.pi * rng.random(128))  # ky = 0 only
    models = np.abs(np.stack([sfft.fftn(truth), sfft.fftn(truth) + stripes])) ** 2
    excess = metrics.unmeasured_excess(models, iobs, valid)
    assert 0.5 < excess[0] < 2.0
    assert excess[1] > 5 * excess[0]
    assert metrics.unmeasured_excess(models, iobs, beam_stop_mask((128, 128), 2.0)) is None
