"""Hit-finding accuracy of the lit-pixel hit finder's thresholds against EuXFEL's extra-redu.

Usage:  pip install extra-redu   (benchmark only; not a dependency of the package)
        python benchmarks/bench_hitfinding.py [--frames 400] [--seed 7]

Frames are simulated with the package's simulator (demo-run sample: PR772-like viruses, water
droplets, aggregates, needles; pulse-energy jitter, Gaussian focus, background) on a 400 x 400 patch
of 0.2 mm AGIPD pixels around the beam at 0.705 m, at several hit rates. Every method gets the
same per-frame score (valid pixels above 0.7 photons) in the same train order (32 pulses a train)
and uses 4 sigma; they differ only in how the blank level and width are estimated:

- xfel-dl mode:   LitPixelHitFinder(statistic="mode")   densest-eighth mode + lower-half MAD
- xfel-dl median: LitPixelHitFinder(statistic="robust") median + MAD
- extra-redu:     extra_redu.spi.hitfinder.SpiHitfinder(mode="adaptive", snr=4, min_scores=100):
                  median + IQR of a centred window of >= 100 frames (its own code, driven through
                  the same internal steps its find_hits() runs, with our scores as its hitscore)
"""

from __future__ import annotations

import argparse
import dataclasses
from importlib import resources

import numpy as np

FRAMES_PER_TRAIN = 32


def simulate_scores(hit_rate: float, n: int, seed: int):
    from xfel_dl_plugins.simulation import grid_detector, load_config
    from xfel_dl_plugins.simulation.generate import generate

    cfg = load_config(str(resources.files("xfel_dl_plugins.simulation") / "configs" / "demo-run.toml"))
    base = cfg.hit_fractions  # split hits among classes as in the demo run
    hits = {k: v for k, v in base.items() if k != "blank"}
    total = sum(hits.values())
    fractions = {"blank": 1 - hit_rate, **{k: hit_rate * v / total for k, v in hits.items()}}
    cfg = dataclasses.replace(cfg, hit_fractions=fractions)
    det = grid_detector((400, 400), pixel_size_m=2e-4, distance_m=cfg.detector.distance_m, binning=1)
    sim = generate(cfg, n, seed=seed, detector=det)
    lit = np.count_nonzero((sim.patterns > 0.7) & sim.valid, axis=(1, 2))
    return lit, sim.hit_class > 0


def ours(lit: np.ndarray, statistic: str) -> np.ndarray:
    from xfel_dl_plugins.stages.base import FrameBatch
    from xfel_dl_plugins.stages.hitfinding import LitPixelHitFinder

    finder = LitPixelHitFinder(statistic=statistic, k_sigma=4.0, min_lit_pixels=0)
    finder.setup()
    found = []
    for start in range(0, len(lit), FRAMES_PER_TRAIN):
        chunk = lit[start : start + FRAMES_PER_TRAIN]
        width = int(chunk.max()) + 1
        data = (np.arange(width)[None, :] < chunk[:, None]).astype(np.float32)  # score-exact frames
        batch = FrameBatch({"data": data, "valid": np.ones_like(data, bool), "train_id": np.zeros(len(chunk))})
        found.append(finder.process(batch)["is_hit"])
    return np.concatenate(found)


def extra_redu(lit: np.ndarray) -> np.ndarray:
    from extra_redu.spi.hitfinder import SpiHitfinder

    hf = SpiHitfinder(modules=list(range(16)), mode="adaptive", snr=4.0, min_scores=100)
    n = len(lit)
    counts = np.full(-(-n // FRAMES_PER_TRAIN), FRAMES_PER_TRAIN)
    counts[-1] = n - FRAMES_PER_TRAIN * (len(counts) - 1)
    hf.count, hf.first = counts, np.cumsum(counts) - counts
    hf.train_ids = list(range(len(counts)))
    hf.trainId = np.repeat(hf.train_ids, counts)
    hf.pulseId = np.concatenate([np.arange(c) for c in counts])
    hf.num_events, hf.num_trains = n, len(counts)
    hf.hitscore, hf.good_mask = lit.astype(int), np.ones(n, bool)
    hf._compute_threshold()
    hf._select_hits()
    return hf.hit_mask


def scores(found: np.ndarray, actual: np.ndarray) -> tuple[float, float, float]:
    tp, fp, fn = (found & actual).sum(), (found & ~actual).sum(), (~found & actual).sum()
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return precision, recall, 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--hit-rates", type=float, nargs="+", default=[0.05, 0.25, 0.5, 0.75])
    args = ap.parse_args()
    methods = {"xfel-dl mode": lambda lit: ours(lit, "mode"), "xfel-dl median": lambda lit: ours(lit, "robust"),
               "extra-redu": extra_redu}
    print("| hit rate | frames | method | precision | recall | F1 |\n|---|---|---|---|---|---|")
    for i, rate in enumerate(args.hit_rates):
        lit, actual = simulate_scores(rate, args.frames, args.seed + i)
        for name, method in methods.items():
            p, r, f1 = scores(method(lit), actual)
            print(f"| {rate:.2f} | {len(lit)} | {name} | {p:.3f} | {r:.3f} | {f1:.3f} |", flush=True)


if __name__ == "__main__":
    main()
