"""Example patterns of each sample type beside their radial profiles (docs/figures/simulation_*.png).

    OMP_NUM_THREADS=1 python docs/figures/make_simulation_figures.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xfel_dl_plugins.physics.formfactors import sphere_amplitude  # noqa: E402
from xfel_dl_plugins.simulation import Simulator, load_config  # noqa: E402

OUT = Path(__file__).parent


def scene_of(sim: Simulator, species_name: str, rng, count: int = 1, touching: bool = True):
    species = [s for s in [*sim.config.sample, *sim.config.contaminants] if s.name == species_name][0]
    sampler = sim.samplers[id(species)]
    scene = []
    for i in range(count):
        p = sampler.draw(rng)
        if i and touching:
            d = rng.standard_normal(3)
            prev = scene[-1][0]
            p.position_m = prev.position_m + d / np.linalg.norm(d) * (p.radius_m + prev.radius_m) * 1.02
        scene.append((p, np.zeros(2), 0))
    return scene


def radial(values, valid, q, bins):
    idx = np.digitize(q[valid], bins) - 1
    ok = (idx >= 0) & (idx < len(bins) - 1)
    s = np.bincount(idx[ok], values[valid][ok], minlength=len(bins) - 1)
    c = np.bincount(idx[ok], minlength=len(bins) - 1)
    return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def panel(examples, path, title):
    fig, axes = plt.subplots(2, len(examples), figsize=(2.6 * len(examples), 5.2), constrained_layout=True)
    for col, (label, sim, frame, expected, radius) in enumerate(examples):
        ax = axes[0, col]
        shown = np.where(sim.valid, frame, np.nan)
        ax.imshow(np.log10(np.clip(shown, 0.5, None)), cmap="magma", vmin=-0.3, vmax=3, origin="lower")
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(2, 2, f"{np.nansum(np.where(sim.valid, frame, 0)):.0f} ph", color="w", fontsize=7)
        q = sim.q_abs / 1e9
        bins = np.linspace(0, q.max(), 70)
        centres = 0.5 * (bins[1:] + bins[:-1])
        ax = axes[1, col]
        ax.semilogy(centres, radial(frame, sim.valid, q, bins), ".", ms=3, label="counted")
        ax.semilogy(centres, radial(expected, sim.valid, q, bins), "-", lw=1, label="expected")
        if radius:  # sphere of the same volume for reference
            ref = sphere_amplitude(centres * 1e9, radius, 0.44e30) ** 2
            scale = np.nanmax(radial(expected, sim.valid, q, bins)) / np.nanmax(ref[centres > 0.12])
            ax.semilogy(centres, ref * scale, "--", lw=0.7, color="grey", label="sphere, same V")
        ax.set_xlabel("q (1/nm)", fontsize=7)
        ax.tick_params(labelsize=6)
        if col == 0:
            ax.set_ylabel("photons / pixel", fontsize=7)
            ax.legend(fontsize=6)
        ax.set_ylim(1e-3, None)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print("wrote", path)


def example(sim, rng, scene, label, streak=False):
    pulse = sim.mean_pulse_photons
    sample = sim.intensity(scene, pulse) if scene else np.zeros(sim.valid.shape, np.float32)
    if streak:
        from xfel_dl_plugins.simulation.samples import streak_intensity

        sample = sample + streak_intensity(rng, sim.q, sim.valid, 3000.0, 1.5 * sim.pixel_dq)
    sample[sim.invalid_index] = 0
    frame, _, _, _ = sim.measure(rng, sample, pulse)
    radius = scene[0][0].radius_m if scene and len(scene) == 1 else None
    return label, sim, frame, sample + sim.gas + sim.stray, radius


def main():
    rng = np.random.default_rng(7)
    sim = Simulator(load_config("mixed-contaminants"))
    ex = [example(sim, rng, [], "blank (gas + stray)")]
    ex.append(example(sim, rng, scene_of(sim, "PR772", rng), "PR772 single"))
    ex.append(example(sim, rng, scene_of(sim, "PR772", rng, 2), "PR772 touching pair"))
    ex.append(example(sim, rng, scene_of(sim, "water_droplet", rng), "water droplet"))
    ex.append(example(sim, rng, scene_of(sim, "virus_aggregate", rng), "virus aggregate"))
    ex.append(example(sim, rng, scene_of(sim, "salt_needle", rng), "salt needle"))
    ex.append(example(sim, rng, [], "beamline streak", streak=True))
    panel(ex, OUT / "simulation_pr772_and_contaminants.png", "PR772 sample at 6 keV, binned AGIPD-1M grid (128 x 128, 0.8 mm, 0.705 m), peak fluence")
    sim = Simulator(load_config("gold-nanoparticles"))
    ex = [example(sim, rng, scene_of(sim, n, rng), n.replace("Au_", "Au ")) for n in
          ("Au_sphere", "Au_cube", "Au_octahedron", "Au_icosahedron", "Au_rod")]
    panel(ex, OUT / "simulation_gold.png", "Gold nanoparticles at 6 keV, 1% transmission, binned AGIPD-1M grid")


if __name__ == "__main__":
    main()
