"""Generate labelled single-particle diffraction patterns in absolute units.

Per pattern: a SASE pulse (gamma-distributed energy), a hit class (blank, single, multiple, other),
particles at random positions in a Gaussian focus (partial hits get a fraction of the peak
fluence), coherent sums of amplitudes for particles close enough to interfere on the detector,
gas and stray-light background, Poisson photon counting, detector readout noise, saturation, and
the detector's gaps and beam stop. Pattern ``i`` depends only on ``(seed, i)``: any batching
gives the same patterns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..physics.constants import CLASSICAL_ELECTRON_RADIUS_M, ELECTRON_VOLT_J, HC_EV_M
from .config import HIT_CLASSES, SimulationConfig, load_config
from .detector import Detector, make_detector
from .parallel import default_workers, map_tasks
from .effects import add_readout_noise, poisson_counts, saturate
from .upsample import block_centres, upsample
from .samples import SHAPE_CODES, SHAPE_NAMES, Particle, SpeciesSampler, streak_intensity

FWHM_TO_SIGMA = 1 / (2 * np.sqrt(2 * np.log(2)))
HIT_CODES = {name: i for i, name in enumerate(HIT_CLASSES)}
MAX_SUPERSAMPLING = 4  # sub-pixels per pixel axis for speckles finer than a pixel


@dataclass
class SimulatedPatterns:
    """Simulated frames and their ground truth (arrays indexed by pattern)."""

    patterns: np.ndarray  # (n, *detector) float32, photons (calibrated-detector-like: noise, no gaps)
    valid: np.ndarray  # (n, *detector) bool, False in gaps / beam stop / bad or saturated pixels
    hit_class: np.ndarray  # (n,) int8: 0 blank, 1 single, 2 multiple, 3 other
    n_particles: np.ndarray  # (n,) int16
    radius_nm: np.ndarray  # (n,) float32, volume-equivalent radius of the (first) particle; 0 if none
    shape: np.ndarray  # (n,) int8 code, names in SHAPE_NAMES
    orientation: np.ndarray  # (n, 4) float32 quaternion (w, x, y, z) body -> lab of the first particle
    photons: np.ndarray  # (n,) float32 expected photons scattered by the sample into valid pixels
    background_photons: np.ndarray  # (n,) float32 expected background photons in valid pixels
    fluence_ph_um2: np.ndarray  # (n,) float32 fluence at the first particle
    pulse_energy_mJ: np.ndarray  # (n,) float32
    projected_density: np.ndarray | None = None  # (n, H, W) float32 electrons/nm^2 (grid detectors)
    meta: dict = field(default_factory=dict)

    shape_names = SHAPE_NAMES
    class_names = HIT_CLASSES

    def __len__(self) -> int:
        return len(self.hit_class)

    def labels(self) -> dict[str, np.ndarray]:
        """The per-pattern truth arrays by name."""
        names = ("hit_class", "n_particles", "radius_nm", "shape", "orientation", "photons",
                 "background_photons", "fluence_ph_um2", "pulse_energy_mJ")
        return {k: getattr(self, k) for k in names}


class Simulator:
    """Everything that does not change from pattern to pattern, computed once."""

    def __init__(self, config: SimulationConfig, detector: Detector | None = None, device: str = "cpu"):
        """``device``: "cpu" (NumPy), or a PyTorch device ("cuda", "cuda:1", "torch-cpu" for PyTorch on
        the CPU), or "auto" (CUDA through PyTorch when available, else NumPy)."""
        self.config = config
        self.detector = detector or make_detector(config.detector)
        beam = config.beam
        geom = self.detector.geometry(beam.photon_energy_eV, beam.polarisation)
        self.geometry = geom
        self.q = geom.q.astype(np.float32)
        self.q_abs = geom.q_abs.astype(np.float32)
        # photons per pixel = J [1/m^2] * scale * |F|^2
        self.scale = (CLASSICAL_ELECTRON_RADIUS_M**2 * geom.polarisation * geom.solid_angle).astype(np.float64)
        self.scale_e30 = (self.scale * 1e30).astype(np.float32)
        self.valid = self.detector.valid
        q_reach = float(geom.q_abs.max())  # any orientation: a body axis can point along q
        self.samplers = {id(sp): SpeciesSampler(sp, q_reach, config.map_oversampling, config.map_interpolation)
                         for sp in [*config.sample, *config.contaminants]}
        photon_j = beam.photon_energy_eV * ELECTRON_VOLT_J
        sigma = beam.focus_fwhm_um * 1e-6 * FWHM_TO_SIGMA
        self.sigma_focus = sigma
        self.mean_pulse_photons = beam.pulse_energy_mJ * 1e-3 / photon_j
        self.peak_fluence_per_photon = beam.transmission / (2 * np.pi * sigma**2)  # 1/m^2 per pulse photon
        fractions = np.array([config.hit_fractions.get(c, 0.0) for c in HIT_CLASSES], dtype=np.float64)
        self.class_p = fractions / fractions.sum()
        # coherent sums only below the separation whose fringes a pixel still resolves (lambda L / 2p)
        self.coherence_length = geom.wavelength_m * self.detector.distance_m / (2 * self.detector.pixel_size_m)
        gas = geom.solid_angle * config.background.gas_photons_per_sr
        self.gas = np.where(self.valid, gas, 0.0).astype(np.float32)
        stray = np.where(self.valid, np.maximum(self.q_abs, 1.0) ** -config.background.stray_exponent * geom.solid_angle, 0.0)
        self.stray = (stray / stray.sum() * config.background.stray_photons if stray.sum() > 0 else stray).astype(np.float32)
        self.gas_total, self.stray_total = float(self.gas.sum()), float(self.stray.sum())
        self.invalid_flat = np.flatnonzero(~self.valid)
        self.use_map = False
        self.pixel_dq = geom.k * self.detector.pixel_size_m / self.detector.distance_m
        # amplitudes are evaluated per detector tile (AGIPD: 128 tiles of 64 x 128 pixels)
        self.tile_shape = (128, 64, 128) if self.detector.kind == "agipd1m" else (1, *self.valid.shape)
        self._coarse_q: dict = {}
        self.backend = None
        device = resolve_device(device)
        if device != "cpu":
            from .torch_backend import TorchBackend

            self.backend = TorchBackend(self, "cpu" if device == "torch-cpu" else device)

    def _factor(self, extent_m: float) -> int:
        """Block size f for evaluating F: at least 8 blocks per oscillation 2 pi / extent of F."""
        period_px = 2 * np.pi / (max(extent_m, 1e-12) * self.pixel_dq)
        for f in (4, 2):
            if period_px / f >= 8 and self.tile_shape[1] % f == 0 and self.tile_shape[2] % f == 0:
                return f
        return 1

    def _supersampling(self, extent_m: float) -> int:
        """Sub-pixels per pixel axis so that the intensity fringes of an object ``extent_m`` in radius
        (period pi / extent in q) get at least two samples: pixels integrate finer speckles."""
        period_px = np.pi / (max(extent_m, 1e-12) * self.pixel_dq)
        return int(min(MAX_SUPERSAMPLING, max(1, np.ceil(2 / period_px))))

    def _q_sub(self, s: int) -> np.ndarray:
        """q at the centres of s x s sub-pixels of every pixel, (T, h*s, w*s, 3) per detector tile."""
        if ("sub", s) not in self._coarse_q:
            t, h, w = self.tile_shape
            pos = self.detector.positions_m.reshape(t, h, w, 3)
            e_row = (pos[:, 1, 0] - pos[:, 0, 0])[:, None, None, None, None, :]
            e_col = (pos[:, 0, 1] - pos[:, 0, 0])[:, None, None, None, None, :]
            u = (np.arange(s) + 0.5) / s - 0.5
            sub = (pos[:, :, None, :, None, :] + u[None, None, :, None, None, None] * e_row
                   + u[None, None, None, None, :, None] * e_col).reshape(t, h * s, w * s, 3)
            d = sub / np.linalg.norm(sub, axis=-1, keepdims=True)
            d[..., 2] -= 1.0
            self._coarse_q[("sub", s)] = (self.geometry.k * d).astype(np.float32)
        return self._coarse_q[("sub", s)]

    def _q_blocks(self, f: int) -> np.ndarray:
        if f not in self._coarse_q:
            pos = block_centres(self.detector.positions_m.reshape(*self.tile_shape, 3), f)
            d = pos / np.linalg.norm(pos, axis=-1, keepdims=True)
            d[..., 2] -= 1.0
            self._coarse_q[f] = (self.geometry.k * d).astype(np.float32)
        return self._coarse_q[f]

    def particle_amplitude(self, particle: Particle) -> np.ndarray:
        """F of a particle centred at the origin at every pixel, via block evaluation + cubic upsampling."""
        f = self._factor(particle.extent_m)
        if f == 1:
            return particle.amplitude(self.q, self.q_abs)
        q = self._q_blocks(f)
        return upsample(particle.amplitude(q), f).reshape(self.valid.shape)

    def mask_invalid(self, values: np.ndarray) -> np.ndarray:
        """``values`` with gaps, beam stop and bad pixels set to 0 (in place)."""
        values.reshape(-1)[self.invalid_flat] = 0.0
        return values

    def exclude(self, pixels: np.ndarray) -> None:
        """Treat ``pixels`` (bool, detector shape) as insensitive from now on (e.g. bad pixels)."""
        self.valid = self.valid & ~pixels
        self.invalid_flat = np.flatnonzero(~self.valid)
        self.gas = np.where(self.valid, self.gas, 0.0)
        self.stray = np.where(self.valid, self.stray, 0.0)
        self.gas_total, self.stray_total = float(self.gas.sum()), float(self.stray.sum())
        if self.backend is not None:
            self.backend._refresh_masks()

    # -- one pattern --------------------------------------------------------------------------------
    def _pick(self, rng, species_list):
        w = np.array([s.weight for s in species_list], dtype=np.float64)
        return species_list[int(rng.choice(len(species_list), p=w / w.sum()))]

    def _offset_in_focus(self, rng) -> np.ndarray:
        r = self.config.beam.max_offset_sigma * self.sigma_focus * np.sqrt(rng.random())
        phi = rng.uniform(0, 2 * np.pi)
        return np.array([r * np.cos(phi), r * np.sin(phi)])

    def draw_scene(self, rng):
        """Choose the class and the particles: list of (particle, focus offset xy, group id)."""
        cfg = self.config
        cls = HIT_CLASSES[int(rng.choice(4, p=self.class_p))]
        scene: list[tuple[Particle, np.ndarray, int]] = []
        streak = False
        if cls == "single":
            sp = self._pick(rng, cfg.sample)
            scene.append((self.samplers[id(sp)].draw(rng, self.use_map), self._offset_in_focus(rng), 0))
        elif cls == "multiple":
            lo, hi = cfg.multiple_count
            count = int(rng.integers(lo, hi + 1))
            group, offset = 0, self._offset_in_focus(rng)
            previous, first = None, None
            for _ in range(count):
                # a monodisperse sample mostly gives multiples of one species (a mixed one, of several)
                same = first is not None and rng.random() < cfg.same_species_fraction
                sp = first if same else self._pick(rng, cfg.sample)
                first = first or sp
                p = self.samplers[id(sp)].draw(rng, self.use_map)
                if previous is not None and rng.random() < cfg.touching_fraction:  # stuck to the previous one
                    d = rng.standard_normal(3)
                    p.position_m = previous[0].position_m + d / np.linalg.norm(d) * (p.radius_m + previous[0].radius_m) * 1.02
                    offset_i, g = previous[1], previous[2]
                else:
                    offset_i = offset if previous is None else self._offset_in_focus(rng)
                    group = group + (previous is not None)
                    g = group
                previous = (p, offset_i, g)
                scene.append(previous)
        elif cls == "other":
            sp = self._pick(rng, cfg.contaminants)
            if sp.shape == "streak":
                streak = True
            else:
                scene.append((self.samplers[id(sp)].draw(rng, self.use_map), self._offset_in_focus(rng), 0))
        return cls, scene, streak

    def intensity(self, scene, pulse_photons: float) -> np.ndarray:
        """Expected photons per pixel scattered by the particles of a scene (no background).

        Particles of one group (closer than the coherence length) add as amplitudes, each with the
        fluence at its place in the focus and the phase of its position; groups add as intensities.
        Float32 arithmetic with the fluence scaled by 1e-30 (amplitudes squared reach ~1e16).
        """
        q = self.q
        total = None
        groups: dict[int, list] = {}
        for particle, offset, g in scene:
            groups.setdefault(g, []).append((particle, offset))
        j0 = pulse_photons * self.peak_fluence_per_photon
        for members in groups.values():
            extent = max(np.linalg.norm(p.position_m) + p.extent_m for p, _ in members)
            sub = self._supersampling(extent)
            qg = q if sub == 1 else self._q_sub(sub)
            amp = 0
            for particle, offset in members:
                fluence = j0 * np.exp(-0.5 * np.dot(offset, offset) / self.sigma_focus**2)
                f = self.particle_amplitude(particle) if sub == 1 else particle.amplitude(qg)
                pos = particle.position_m
                if np.any(pos != 0):
                    f = f * np.exp(-1j * (qg @ pos.astype(np.float32)))
                amp = amp + np.float32(np.sqrt(fluence * 1e-30)) * f
            power = amp.real**2 + amp.imag**2 if np.iscomplexobj(amp) else amp * amp
            if sub > 1:  # pixels integrate speckles finer than themselves
                t, h, w = self.tile_shape
                power = power.reshape(t, h, sub, w, sub).mean(axis=(2, 4)).reshape(self.valid.shape)
            total = power if total is None else total + power
        total *= self.scale_e30
        return total

    def simulate(self, index: int, seed: int, want_projection: bool = False) -> dict:
        cfg = self.config
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
        jitter = cfg.beam.pulse_energy_jitter
        pulse = self.mean_pulse_photons * (rng.gamma(1 / jitter**2, jitter**2) if jitter > 0 else 1.0)
        cls, scene, streak = self.draw_scene(rng)
        be = self.backend or self
        sample = be.intensity(scene, pulse) if scene else None
        if streak:
            photons = 10 ** rng.uniform(2.5, 4.0)
            streak_i = be.streak(rng, photons)
            sample = streak_i if sample is None else sample + streak_i
        photons = 0.0
        if sample is not None:
            sample = be.mask_invalid(sample)
            photons = float(sample.sum())
        counts, valid, saturated, background_total = be.measure(rng, sample, pulse)
        first = scene[0][0] if scene else None
        out = dict(
            pattern=counts, valid=valid, hit_class=HIT_CODES[cls],
            n_particles=len(scene), radius_nm=first.radius_m * 1e9 if first else 0.0,
            shape=SHAPE_CODES[first.shape] if first else (SHAPE_CODES["streak"] if streak else 0),
            orientation=first.quaternion if first else np.array([1.0, 0, 0, 0]),
            photons=photons,
            background_photons=background_total,
            saturated=0 if saturated is None else int(saturated.sum()),
            fluence_ph_um2=(pulse * self.peak_fluence_per_photon * np.exp(-0.5 * np.dot(scene[0][1], scene[0][1]) / self.sigma_focus**2) * 1e-12) if scene else 0.0,
            pulse_energy_mJ=pulse * cfg.beam.photon_energy_eV * ELECTRON_VOLT_J * 1e3,
        )
        if want_projection:
            out["projected_density"] = self.projected_density(scene)
        return out

    def streak(self, rng: np.random.Generator, photons: float) -> np.ndarray:
        """Expected photons of a streak of non-particle scatter (see :func:`samples.streak_intensity`)."""
        return streak_intensity(rng, self.q, self.valid, photons, 1.5 * self.pixel_dq)

    def measure(self, rng: np.random.Generator, sample: np.ndarray | None, pulse_photons: float):
        """Detector frame for the expected sample photons ``sample`` (or None; overwritten): background,
        Poisson counting, readout noise, saturation, gaps. Returns (frame, valid, saturated or None, background)."""
        bg_cfg, det = self.config.background, self.config.detector
        stray_level = max(0.0, 1 + bg_cfg.jitter * rng.standard_normal())
        pulse_ratio = pulse_photons / self.mean_pulse_photons
        background_total = self.gas_total * pulse_ratio + self.stray_total * stray_level
        expected = np.multiply(self.gas, np.float32(pulse_ratio), out=sample if sample is None else None)
        if sample is not None:
            sample += expected
            expected = sample
        expected += self.stray * np.float32(stray_level)
        counts = poisson_counts(rng, expected)
        native = self.detector.native_pixels
        add_readout_noise(rng, counts, det.readout_noise_photons * np.sqrt(native))
        saturated = saturate(counts, det.saturation_photons * native)
        valid = self.valid if saturated is None else self.valid & ~saturated
        counts.reshape(-1)[self.invalid_flat] = 0.0
        return counts, valid, saturated, background_total

    def projected_density(self, scene) -> np.ndarray:
        """Electron density projected along the beam (electrons/nm^2) on the real-space grid conjugate
        to the detector grid (pixel lambda L / (N p)), band-limited to the detector's q range: the
        inverse FFT of the particles' amplitudes on the q_z = 0 plane (projection approximation)."""
        if self.detector.kind != "grid":
            raise ValueError("projected densities are defined for grid detectors")
        h, w = self.valid.shape
        k = 2 * np.pi / self.geometry.wavelength_m
        dq = k * self.detector.pixel_size_m / self.detector.distance_m
        qy = (np.arange(h) - h // 2) * dq
        qx = (np.arange(w) - w // 2) * dq
        q = np.zeros((h, w, 3), dtype=np.float32)
        q[..., 0], q[..., 1] = qx[None, :], qy[:, None]
        if not scene:
            return np.zeros((h, w), np.float32)
        main_group = scene[0][2]
        amp = np.zeros((h, w), dtype=np.complex128)
        for particle, _, g in scene:
            if g != main_group:
                continue
            f = particle.amplitude(q, None) * np.exp(-1j * (q @ particle.position_m.astype(np.float32)))
            amp += f
        # rho(x) = 1/(2 pi)^2 sum F(q) exp(i q x) dq^2 -> electrons/m^2
        rho = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(amp))).real * (h * w) * dq * dq / (2 * np.pi) ** 2
        return (rho * 1e-18).astype(np.float32)


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when PyTorch sees a GPU, else "cpu"; other names pass through."""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def generate(config, n: int, seed: int = 0, *, detector: Detector | None = None, start: int = 0,
             projected_density: bool = False, use_map: bool = False, workers: int = 1,
             device: str = "cpu", progress: bool = False) -> SimulatedPatterns:
    """Simulate patterns ``start .. start+n-1`` of the dataset defined by ``config`` and ``seed``.

    ``config``: a :class:`SimulationConfig`, or a path to a TOML file / packaged config name.
    ``detector``: overrides the configured detector (e.g. :func:`detector.grid_detector`).
    ``use_map``: polyhedra through the 3D-map path instead of their exact analytic amplitude.
    ``workers``: processes to use (0: one per available core, at most 4); results do not depend on it.
    ``device``: "cpu" (NumPy), "auto", "cuda" or another PyTorch device (see :class:`Simulator`);
    device runs use one process.
    """
    if not isinstance(config, SimulationConfig):
        config = load_config(config)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    workers = default_workers() if workers == 0 else workers
    device = resolve_device(device)
    if device != "cpu":
        workers = 1
    chunk = max(1, min(256, -(-n // max(1, 4 * workers))))
    tasks = [(i, min(chunk, start + n - i), seed, projected_density) for i in range(start, start + n, chunk)]
    parts = map_tasks(_make_simulator, (config, detector, use_map, device), _simulate_chunk, tasks, workers)
    rows: list[dict] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="simulating", unit="pattern")
    for part in parts:
        rows.extend(part)
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    return _collect(rows, _dataset_meta(config, detector), seed, start, projected_density)


def _make_simulator(config, detector, use_map, device="cpu") -> Simulator:
    sim = Simulator(config, detector, device)
    sim.use_map = use_map
    return sim


def _dataset_meta(config: SimulationConfig, detector: Detector | None) -> dict:
    """Geometry facts stored with a dataset (and the pattern shape)."""
    det = detector or make_detector(config.detector)
    return dict(photon_energy_eV=config.beam.photon_energy_eV, distance_m=det.distance_m,
                pixel_size_m=det.pixel_size_m, detector=det.kind, centre_px=det.centre_px, shape=det.valid.shape,
                wavelength_m=HC_EV_M / config.beam.photon_energy_eV)


def _simulate_chunk(sim: Simulator, task) -> list[dict]:
    first, count, seed, projection = task
    return [sim.simulate(i, seed, projection) for i in range(first, first + count)]


_SCALARS = (("hit_class", np.int8), ("n_particles", np.int16), ("radius_nm", np.float32), ("shape", np.int8),
            ("photons", np.float32), ("background_photons", np.float32), ("fluence_ph_um2", np.float32),
            ("pulse_energy_mJ", np.float32))


def _collect(rows: list[dict], meta: dict, seed: int, start: int, projection: bool) -> SimulatedPatterns:
    shape = meta.pop("shape")
    n = len(rows)
    patterns = np.empty((n, *shape), np.float32)
    valid = np.empty((n, *shape), bool)
    proj = np.empty((n, *shape), np.float32) if projection else None
    for row, r in enumerate(rows):
        patterns[row], valid[row] = r["pattern"], r["valid"]
        if proj is not None:
            proj[row] = r["projected_density"]
    scalars = {k: np.array([r[k] for r in rows], dtype=t).reshape(n) for k, t in _SCALARS}
    orientation = np.array([r["orientation"] for r in rows], dtype=np.float32).reshape(n, 4)
    meta.update(seed=seed, start=start, shape_names=SHAPE_NAMES, class_names=HIT_CLASSES)
    return SimulatedPatterns(patterns=patterns, valid=valid, orientation=orientation, projected_density=proj,
                             meta=meta, **scalars)
