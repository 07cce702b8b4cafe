"""The per-pixel work of the simulator in PyTorch, for GPUs (``device="cuda"``); also runs on the CPU.

Scenes (class, particles, positions, pulse energy) are drawn with NumPy exactly as on the CPU path;
amplitudes, intensities, background, Poisson counting, readout noise and saturation run on the
device in float32. Results are deterministic for a seed on a given device, but the random photon
counts differ from the NumPy path (different generators); expected intensities agree to float32
precision (tested on the CPU).
"""

from __future__ import annotations

import numpy as np

from ..errors import XfelDLError
from ..physics.density import FourierMap
from ..physics.polyhedra import _edge_pairs, polyhedron_edges


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is an optional dependency
        raise XfelDLError("device simulation needs PyTorch (pip install torch)") from None
    return torch


class TorchBackend:
    """Device copies of a Simulator's per-pixel arrays and the device versions of its steps."""

    def __init__(self, sim, device: str):
        torch = _torch()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise XfelDLError(f"device {device!r} requested but CUDA is not available to PyTorch")
        self.torch = torch
        self.sim = sim
        self.device = torch.device(device)
        t = self.tensor
        self.q, self.q_abs = t(sim.q), t(sim.q_abs)
        self.scale_e30 = t(sim.scale_e30)
        self._refresh_masks()
        self._cache: dict = {}

    def tensor(self, a, dtype=None):
        torch = self.torch
        arr = np.asarray(a)
        if dtype is None:
            dtype = torch.bool if arr.dtype == bool else torch.float32
        return torch.as_tensor(np.ascontiguousarray(arr), dtype=dtype, device=self.device)

    def _refresh_masks(self) -> None:
        self.valid = self.tensor(self.sim.valid)
        self.gas, self.stray = self.tensor(self.sim.gas), self.tensor(self.sim.stray)

    def _cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # -- amplitudes ---------------------------------------------------------------------------------
    def sphere_factor(self, x):
        torch = self.torch
        small = x.abs() < 0.05
        xs = torch.where(small, torch.ones_like(x), x)
        out = 3 * (torch.sin(xs) - xs * torch.cos(xs)) / (xs * xs * xs)
        x2 = x * x
        return torch.where(small, 1 - x2 / 10 + x2 * x2 / 280, out)

    def sphere(self, qa, radius, rho):
        return (rho * 4 / 3 * np.pi * radius**3) * self.sphere_factor(qa * radius)

    def amplitude(self, spec: dict, q, qa):
        torch = self.torch
        kind = spec["kind"]
        if kind == "sphere":
            return self.sphere(qa, spec["radius"], spec["rho"])
        if kind == "core_shell":
            return self.sphere(qa, spec["radius"], spec["rho"]) + self.sphere(qa, spec["core"], spec["rho_core"] - spec["rho"])
        if kind == "spheroid":
            qb = q @ self.tensor(spec["rot"])
            x = torch.sqrt(spec["a"] ** 2 * (qb[..., 0] ** 2 + qb[..., 1] ** 2) + spec["c"] ** 2 * qb[..., 2] ** 2)
            return (spec["rho"] * 4 / 3 * np.pi * spec["a"] ** 2 * spec["c"]) * self.sphere_factor(x)
        if kind == "cluster":
            phase = q @ self.tensor(spec["centres"].T)
            amp = 0
            for i, r in enumerate(spec["radii"]):
                amp = amp + self.sphere(qa, float(r), spec["rho"]) * torch.exp(-1j * phase[..., i])
            return amp
        if kind == "polyhedron":
            return self.polyhedron(q @ self.tensor(spec["rot"]), spec["shape"], spec["radius"], spec["rho"])
        if kind == "map":
            return self.fourier_map(spec["map"], q @ self.tensor(spec["rot"]), spec["scale"])
        raise XfelDLError(f"unknown particle kind {kind!r}")

    def polyhedron(self, q_body, shape, radius, rho):
        torch = self.torch
        p = polyhedron_edges(shape)
        u = self._cached(("poly", shape), lambda: {k: self.tensor(getattr(_edge_pairs(shape), k)) for k in (
            "normals_t", "half_tangent_t", "mid_t", "length", "edge_normal_t", "expand", "incidence", "face_area", "face_offset")})
        shp = q_body.shape[:-1]
        q = q_body.reshape(-1, 3) * radius
        q2 = (q * q).sum(-1)
        qn = q @ u["normals_t"]
        qf2 = q2[:, None] - qn * qn
        half = q @ u["half_tangent_t"]
        half = torch.where(half.abs() < 1e-4, torch.full_like(half, 1e-4), half)
        trig = torch.sin(half) / half * torch.cos(q @ u["mid_t"]) * u["length"]
        face = ((q @ u["edge_normal_t"]) * (trig @ u["expand"])) @ u["incidence"]
        small_f = qf2 < 1e-6 * torch.clamp(q2[:, None], min=1e-12)
        face = torch.where(small_f, u["face_area"] * torch.cos(qn * u["face_offset"]), -face / torch.where(small_f, torch.ones_like(qf2), qf2))
        small = q2 < 2.5e-3
        amp = torch.where(small, p.volume * (1 - q2 * p.rg2 / 6), (qn * face).sum(-1) / torch.where(small, torch.ones_like(q2), q2))
        return (rho * radius**3) * amp.reshape(shp)

    def fourier_map(self, fmap: FourierMap, q_body, scale: float):
        """Tricubic B-spline interpolation of the prefiltered map (or trilinear) on the device."""
        torch = self.torch
        parts = self._cached(("map", id(fmap)), lambda: [self.tensor(p) for p in fmap.parts])
        qb = q_body * scale
        if float(qb.abs().max()) > fmap.q_max:
            raise XfelDLError("density map voxel too coarse for the detector's q range")
        c = (qb / fmap.dq + fmap.size // 2).reshape(-1, 3)
        base = torch.floor(c)
        t = c - base
        m = fmap.size
        strides = torch.tensor([m * m, m, 1], device=self.device)
        if fmap.interpolation == "cubic":
            i = base.long() - 1
            t2, t3 = t * t, t * t * t
            s = 1 - t
            w = torch.stack([s * s * s, 3 * t3 - 6 * t2 + 4, -3 * t3 + 3 * t2 + 3 * t + 1, t3], -1) / 6  # (P, 3, 4)
            taps = 4
        else:
            i = base.long()
            w = torch.stack([1 - t, t], -1)
            taps = 2
        r = torch.arange(taps, device=self.device)
        idx = ((i * strides).sum(-1)[:, None, None, None] + r[:, None, None] * m * m + r[None, :, None] * m + r[None, None, :])
        weight = w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]
        vals = [torch.take(p, idx).mul_(weight).sum((1, 2, 3)) for p in parts]
        out = vals[0] if fmap.is_real else torch.complex(vals[0], vals[1])
        return (out * scale**3).reshape(q_body.shape[:-1])

    # -- the Simulator's steps ------------------------------------------------------------------------
    def particle_amplitude(self, particle):
        sim = self.sim
        f = sim._factor(particle.extent_m)
        if f == 1:
            return self.amplitude(particle.spec, self.q, self.q_abs)
        q = self._cached(("blocks", f), lambda: self.tensor(sim._q_blocks(f)))
        qa = self._cached(("blocks_abs", f), lambda: q.norm(dim=-1))
        return self.upsample(self.amplitude(particle.spec, q, qa), f).reshape(self.q_abs.shape)

    def upsample(self, padded, f: int):
        from .upsample import PAD, _keys

        torch = self.torch
        for axis in (-1, -2):
            p = padded.movedim(axis, -1)
            n = p.shape[-1] - 2 * PAD
            out = torch.empty(p.shape[:-1] + (n * f,), dtype=p.dtype, device=self.device)
            for j in range(f):
                x = (j + 0.5) / f - 0.5
                b = int(np.floor(x))
                acc = 0
                for k in range(4):
                    start = PAD + b + k - 1
                    acc = acc + float(_keys(np.array(x - b - (k - 1)))) * p[..., start:start + n]
                out[..., j::f] = acc
            padded = out.movedim(-1, axis)
        return padded

    def intensity(self, scene, pulse_photons: float):
        sim = self.sim
        j0 = pulse_photons * sim.peak_fluence_per_photon
        groups: dict[int, list] = {}
        for particle, offset, g in scene:
            groups.setdefault(g, []).append((particle, offset))
        total = None
        for members in groups.values():
            extent = max(np.linalg.norm(p.position_m) + p.extent_m for p, _ in members)
            sub = sim._supersampling(extent)
            if sub > 1:
                qg = self._cached(("sub", sub), lambda: self.tensor(sim._q_sub(sub)))
                qga = self._cached(("sub_abs", sub), lambda: qg.norm(dim=-1))
            else:
                qg, qga = self.q, self.q_abs
            amp = 0
            for particle, offset in members:
                fluence = j0 * np.exp(-0.5 * np.dot(offset, offset) / sim.sigma_focus**2)
                f = self.particle_amplitude(particle) if sub == 1 else self.amplitude(particle.spec, qg, qga)
                if np.any(particle.position_m != 0):
                    f = f * self.torch.exp(-1j * (qg @ self.tensor(particle.position_m)))
                amp = amp + float(np.sqrt(fluence * 1e-30)) * f
            power = amp.real**2 + amp.imag**2 if amp.is_complex() else amp * amp
            if sub > 1:
                t, h, w = sim.tile_shape
                power = power.reshape(t, h, sub, w, sub).mean(dim=(2, 4)).reshape(self.q_abs.shape)
            total = power if total is None else total + power
        return total * self.scale_e30

    def streak(self, rng, photons: float):
        torch = self.torch
        phi = rng.uniform(0, np.pi)
        width = 1.5 * self.sim.pixel_dq
        along = self.q[..., 0] * np.cos(phi) + self.q[..., 1] * np.sin(phi)
        across = -self.q[..., 0] * np.sin(phi) + self.q[..., 1] * np.cos(phi)
        profile = torch.exp(-0.5 * (across / width) ** 2) / (along**2 + (3 * width) ** 2)
        profile = torch.where(self.valid, profile, torch.zeros_like(profile))
        total = float(profile.sum())
        return profile * (photons / total) if total > 0 else profile

    def mask_invalid(self, values):
        return self.torch.where(self.valid, values, self.torch.zeros_like(values))

    def measure(self, rng: np.random.Generator, sample, pulse_photons: float):
        torch = self.torch
        sim = self.sim
        bg_cfg, det = sim.config.background, sim.config.detector
        stray_level = max(0.0, 1 + bg_cfg.jitter * rng.standard_normal())
        pulse_ratio = pulse_photons / sim.mean_pulse_photons
        expected = self.gas * pulse_ratio + self.stray * stray_level
        background_total = sim.gas_total * pulse_ratio + sim.stray_total * stray_level
        if sample is not None:
            expected = expected + sample
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(rng.integers(2**62)))
        counts = torch.poisson(expected, generator=gen)
        sigma = det.readout_noise_photons * np.sqrt(sim.detector.native_pixels)
        if sigma > 0:
            counts = counts + sigma * torch.randn(counts.shape, generator=gen, device=self.device)
        limit = det.saturation_photons * sim.detector.native_pixels
        saturated = counts >= limit
        counts = torch.clamp(counts, max=limit)
        counts = torch.where(self.valid, counts, torch.zeros_like(counts))
        any_sat = bool(saturated.any())
        valid = self.valid & ~saturated if any_sat else self.valid
        return (counts.cpu().numpy(), valid.cpu().numpy(), saturated.cpu().numpy() if any_sat else None, background_total)
