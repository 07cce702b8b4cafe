"""Which multiple hits does the CNN call single? A diagnostic of a test set of eval_classifier.py.

    PYTHONPATH=. python benchmarks/multiples_breakdown.py [pr772_realistic|pr772_weak|pr772_far_detector]

Re-draws each multiple hit's scene (the simulator is deterministic per frame index and seed) and
reports, for multiples called single and called multiple: whether the particles form one touching
(coherent) group, the fraction of the sample photons outside the brightest group, and the radius
ratio of the two largest separate particles (incoherent sums of equal spheres look like one sphere).
"""

from __future__ import annotations

import sys

import numpy as np

from eval_classifier import EVAL_DETECTOR, TEST_SETS, cached_simulation, sim_geometry
from xfel_dl_plugins.classification import CLASS_NAMES
from xfel_dl_plugins.classification.data import frames_on_grid
from xfel_dl_plugins.classification.runtime import ClassifierModel
from xfel_dl_plugins.simulation.config import config_from_dict
from xfel_dl_plugins.simulation.generate import Simulator
from xfel_dl_plugins.stages.classification import matched_binning

SINGLE, MULTIPLE = CLASS_NAMES.index("single"), CLASS_NAMES.index("multiple")


def scene_facts(sim: Simulator, index: int, seed: int) -> dict:
    """Class, groups and per-group sample photons of frame ``index``, drawn as Simulator.simulate draws them."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    jitter = sim.config.beam.pulse_energy_jitter
    pulse = sim.mean_pulse_photons * (rng.gamma(1 / jitter**2, jitter**2) if jitter > 0 else 1.0)
    cls, scene, _ = sim.draw_scene(rng)
    groups: dict[int, list] = {}
    for member in scene:
        groups.setdefault(member[2], []).append(member)
    photons = sorted((float(sim.intensity(m, pulse).sum()), [p.radius_m for p, _, _ in m]) for m in groups.values())[::-1]
    total = sum(p for p, _ in photons)
    radii = sorted((max(r) for _, r in photons), reverse=True)
    return {"class": cls, "touching": any(len(r) > 1 for _, r in photons), "n_groups": len(photons),
            "secondary_fraction": (total - photons[0][0]) / total if total > 0 else 0.0,
            "radius_ratio": radii[1] / radii[0] if len(radii) > 1 else np.nan}


def main(name: str = "pr772_realistic") -> None:
    spec = TEST_SETS[name]
    config = {**spec["config"], "detector": spec.get("detector", EVAL_DETECTOR)}
    raw = cached_simulation(config, 1000, spec["seed"])
    model = ClassifierModel()
    grid = {**model.grid, "binning": matched_binning(model.grid, sim_geometry(config, raw["patterns"].shape[1:]))}
    frames = frames_on_grid(raw, config, grid)
    predicted = model.predict(frames.patterns, frames.valid)["class_index"]
    sim = Simulator(config_from_dict(config))
    for called, label in ((SINGLE, "called single"), (MULTIPLE, "called multiple")):
        rows = []
        for i in np.flatnonzero((frames.labels == MULTIPLE) & (predicted == called)):
            facts = scene_facts(sim, int(i), spec["seed"])
            assert facts["class"] == "multiple", "the re-drawn scene differs from the stored frame: simulator changed?"
            rows.append(facts)
        separate = [r for r in rows if r["n_groups"] > 1]
        fractions = np.array([r["secondary_fraction"] for r in separate])
        ratios = np.array([r["radius_ratio"] for r in separate])
        print(f"{name}: {len(rows)} multiples {label}: {sum(r['n_groups'] == 1 for r in rows)} one touching group, "
              f"{len(separate)} with separate particles"
              + (f" (photons outside the brightest group: median {np.median(fractions):.2f}, range "
                 f"{fractions.min():.2f}-{fractions.max():.2f}; radius ratio of the two largest: median "
                 f"{np.median(ratios):.3f})" if separate else ""))


if __name__ == "__main__":
    main(*sys.argv[1:])
