"""The forward models against textbook physics (not against themselves)."""

import numpy as np
import pytest

from xfel_dl_plugins.physics import density as dens
from xfel_dl_plugins.physics.constants import CLASSICAL_ELECTRON_RADIUS_M, electron_density, photon_wavelength_m
from xfel_dl_plugins.physics.formfactors import sphere_amplitude, spheroid_amplitude
from xfel_dl_plugins.physics.geometry import flat_detector_positions, scattering_geometry
from xfel_dl_plugins.physics.polyhedra import polyhedron_amplitude, polyhedron_edges
from xfel_dl_plugins.physics.rotation import quaternion_to_matrix, random_quaternions
from xfel_dl_plugins.simulation.effects import poisson_counts

RHO = electron_density("protein")
ENERGY = 6000.0
WAVELENGTH = photon_wavelength_m(ENERGY)
K = 2 * np.pi / WAVELENGTH


def textbook_q(r_m, distance_m):
    """q = 4 pi sin(theta) / lambda with 2 theta = atan(r / L)."""
    return 4 * np.pi * np.sin(np.arctan2(r_m, distance_m) / 2) / WAVELENGTH


def radial_profile(values, radius, bins):
    idx = np.digitize(radius.ravel(), bins) - 1
    ok = (idx >= 0) & (idx < len(bins) - 1)
    s = np.bincount(idx[ok], values.ravel()[ok], minlength=len(bins) - 1)
    c = np.bincount(idx[ok], minlength=len(bins) - 1)
    return s / np.maximum(c, 1), c


def test_sphere_minima_on_a_detector_at_the_bessel_zeros():
    radius, distance, pixel = 50e-9, 0.7, 20e-6
    pos = flat_detector_positions((1, 20000), pixel, distance, centre_px=(0, 0))
    geom = scattering_geometry(pos, ENERGY, pixel**2)
    intensity = sphere_amplitude(geom.q_abs, radius, RHO)[0] ** 2
    q = textbook_q(pos[0, :, 0], distance)
    x = q * radius
    minima = [x[i] for i in range(1, len(x) - 1) if intensity[i] < intensity[i - 1] and intensity[i] < intensity[i + 1]]
    np.testing.assert_allclose(minima[:3], [4.4934, 7.7253, 10.9041], atol=0.03)  # pixel step 0.043 in qR


def test_guinier_law_sphere_and_icosahedron():
    q = np.linspace(1e6, 8e6, 20)
    radius = 40e-9
    for amp, rg2 in (
        (sphere_amplitude(q, radius, RHO) ** 2, 3 * radius**2 / 5),
        (polyhedron_amplitude(np.stack([q, 0 * q, 0 * q], -1), "icosahedron", radius, RHO) ** 2, None),
    ):
        slope = np.polyfit(q**2, np.log(amp), 1)[0]
        if rg2 is None:  # Rg^2 of the icosahedron from its voxelised density: an independent route
            m = dens.polyhedron_map("icosahedron", radius, RHO, radius / 60)
            c = m.coordinates()
            x, y, z = np.meshgrid(c, c, c, indexing="ij", sparse=True)
            rg2 = float((m.values * (x * x + y * y + z * z)).sum() / m.values.sum())
        assert -3 * slope == pytest.approx(rg2, rel=0.01)


def test_porod_envelope_q4_icosahedron_and_sphere():
    """<|F|^2> q^4 -> 2 pi rho^2 S at large q (S: surface area)."""
    radius = 30e-9
    rng = np.random.default_rng(0)
    dirs = rng.standard_normal((4000, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    q = rng.uniform(60, 90, size=(4000, 1)) / radius
    qv = dirs * q
    for shape, area in (("icosahedron", polyhedron_edges("icosahedron").face_area.sum() * radius**2),
                        ("sphere", 4 * np.pi * radius**2)):
        f = sphere_amplitude(q[:, 0], radius, RHO) if shape == "sphere" else polyhedron_amplitude(qv, shape, radius, RHO)
        porod = np.mean(f.astype(np.float64) ** 2 * q[:, 0] ** 4)
        assert porod == pytest.approx(2 * np.pi * RHO**2 * area, rel=0.06)


def test_total_scattered_photons_of_a_sphere_equal_the_born_value():
    """sum over a fine flat detector of J r_e^2 P dOmega |F|^2 = J r_e^2 lambda^2 2 pi rho^2 R^4
    (small-angle Born cross-section from Parseval's theorem on the projected density)."""
    radius, distance, fluence = 35e-9, 0.7, 1e23
    dq_r = 0.25  # pixel step in qR
    pixel = dq_r / radius / K * distance
    n = 800  # reaches qR = 100: the Porod tail beyond holds 1/(qR)^2 = 1e-4 of the photons
    pos = flat_detector_positions((n, n), pixel, distance)
    geom = scattering_geometry(pos, ENERGY, pixel**2)
    photons = fluence * CLASSICAL_ELECTRON_RADIUS_M**2 * geom.polarisation * geom.solid_angle * sphere_amplitude(geom.q_abs, radius, RHO) ** 2
    born = fluence * CLASSICAL_ELECTRON_RADIUS_M**2 * WAVELENGTH**2 * 2 * np.pi * RHO**2 * radius**4
    assert photons.sum() == pytest.approx(born, rel=0.01)


def test_solid_angle_and_polarisation_of_a_flat_detector():
    a, h, pixel = 0.1, 0.2, 0.5e-3
    n = int(round(a / pixel))
    pos = flat_detector_positions((n, n), pixel, h, centre_px=((n - 1) / 2, (n - 1) / 2))
    geom = scattering_geometry(pos, ENERGY, pixel**2)
    exact = 4 * np.arcsin((a / 2) ** 2 / ((a / 2) ** 2 + h**2))  # solid angle of a centred square
    assert geom.solid_angle.sum() == pytest.approx(exact, rel=1e-4)
    two_theta = np.arctan2(np.hypot(pos[..., 0], pos[..., 1]), h)
    phi = np.arctan2(pos[..., 1], pos[..., 0])
    np.testing.assert_allclose(geom.polarisation, 1 - np.sin(two_theta) ** 2 * np.cos(phi) ** 2, atol=1e-12)
    np.testing.assert_allclose(geom.q_abs, textbook_q(np.hypot(pos[..., 0], pos[..., 1]), h), rtol=1e-12)


def test_voxelised_sphere_through_the_map_path_matches_the_analytic_sphere():
    radius = 30e-9
    pos = flat_detector_positions((128, 128), 0.8e-3, 0.705)
    geom = scattering_geometry(pos, ENERGY, 0.8e-3**2)
    voxel = 0.9 * np.pi / geom.q_abs.max()
    fmap = dens.FourierMap(dens.sphere_map(radius, RHO, voxel))  # cubic B-splines, oversampling 2
    rot = quaternion_to_matrix(random_quaternions(np.random.default_rng(1), 1)[0])
    mapped = fmap.amplitude(geom.q, rot) ** 2
    exact = sphere_amplitude(geom.q_abs, radius, RHO) ** 2
    bins = np.linspace(0, geom.q_abs.max(), 60)
    pm, counts = radial_profile(mapped, geom.q_abs, bins)
    pe, _ = radial_profile(exact, geom.q_abs, bins)
    ok = counts > 20
    assert fmap.electrons == pytest.approx(RHO * 4 / 3 * np.pi * radius**3, rel=0.005)
    assert np.sum(np.abs(pm - pe)[ok] * counts[ok]) / np.sum(pe[ok] * counts[ok]) < 0.02
    assert mapped.sum() == pytest.approx(exact.sum(), rel=0.01)
    lin = dens.FourierMap(dens.sphere_map(radius, RHO, voxel), oversampling=4, interpolation="linear")
    assert (lin.amplitude(geom.q, rot) ** 2).sum() == pytest.approx(exact.sum(), rel=0.08)


def test_analytic_polyhedra_agree_with_their_voxelised_maps():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((3000, 3))
    q *= rng.uniform(0, 10, (3000, 1)) / np.linalg.norm(q, axis=1, keepdims=True)
    for shape in ("icosahedron", "cube"):
        exact = polyhedron_amplitude(q, shape, 1.0, 1.0)
        mapped = dens.FourierMap(dens.polyhedron_map(shape, 1.0, 1.0, 0.05)).amplitude(q)
        assert np.max(np.abs(mapped - exact)) < 0.02 * 4 / 3 * np.pi


def test_ewald_curvature_matters_only_at_wide_angle():
    """|q| differs from its transverse part |q_perp| = k sin(2 theta) at second order in the angle;
    the projection approximation (q_z = 0) reproduces the exact pattern of a particle elongated
    along the beam at small angles only."""
    a, c = 20e-9, 80e-9  # prolate spheroid, long axis along the beam
    for distance, small_angle in ((5.0, True), (0.05, False)):
        pos = flat_detector_positions((1, 200), 0.2e-3, distance, centre_px=(0, 0))
        geom = scattering_geometry(pos, ENERGY, 0.2e-3**2)
        q_perp = np.hypot(geom.q[..., 0], geom.q[..., 1])[:, 1:]
        two_theta = np.arctan2(pos[..., 0], distance)[:, 1:]
        np.testing.assert_allclose(q_perp / geom.q_abs[:, 1:], np.cos(two_theta / 2), rtol=1e-9)
        exact = spheroid_amplitude(geom.q, a, c, np.eye(3), RHO) ** 2
        flat = spheroid_amplitude(dens.projection_q(geom.q), a, c, np.eye(3), RHO) ** 2
        rel = np.median(np.abs(exact - flat) / np.maximum(exact, flat))
        assert (rel < 2e-3) if small_angle else (rel > 0.3), (distance, rel)


@pytest.mark.parametrize("pixels", [800, 1 << 18])  # per-pixel draws / the Poisson-process sampler
def test_photon_counts_are_poisson(pixels):
    rng = np.random.default_rng(0)
    levels = np.array([0.01, 0.3, 2.0, 30.0])
    expected = np.repeat(levels, pixels // 4)
    n = 2000 if pixels < 10000 else 100
    total = np.zeros(expected.shape)
    total2 = np.zeros(expected.shape)
    pair = []
    for _ in range(n):
        c = poisson_counts(rng, expected).astype(np.float64)
        total += c
        total2 += c * c
        pair.append(c[pixels // 4 + 1: pixels // 4 + 3])
    mean = total / n
    var = total2 / n - mean**2
    for level in levels:
        sel = expected == level
        assert mean[sel].mean() == pytest.approx(level, rel=0.03)
        assert var[sel].mean() * n / (n - 1) == pytest.approx(level, rel=0.05)  # variance = mean
    a, b = np.array(pair).T  # neighbouring pixels are independent
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.35 if n == 100 else abs(np.corrcoef(a, b)[0, 1]) < 0.1
