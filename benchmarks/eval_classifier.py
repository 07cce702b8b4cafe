"""Evaluate the single-hit classifiers on held-out simulated data, next to the non-learned baseline.

Reports, per test set: per-class precision / recall / F1 and the confusion matrix of the CNN
classifier (packaged weights), of the lit-pixel hit finder + sphere-size-fit baseline, and few-shot
accuracy of the embedding classifier on particle types never seen in training (10, 20, 50 labels per
class), and the few-shot stage adapted to each test set's sample with labelled frames of another run of it;
then throughput of the classifier and of the lit-pixel baseline measured in the same run.

    PYTHONPATH=. python benchmarks/eval_classifier.py --out section.md   (the classification section of docs/benchmarks.md)
    PYTHONPATH=. python benchmarks/eval_classifier.py --quick          # small sets, a smoke run
    PYTHONPATH=. python benchmarks/eval_classifier.py --device cuda --only throughput

The baseline is given its best case: its lit-pixel threshold and fit-quality cut are chosen on a
separate validation set to maximise single-hit F1, and it knows the sample's radius range.
Simulated sets use seeds and particle types disjoint from the training configs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from xfel_dl_plugins.classification import CLASS_NAMES, SINGLE
from xfel_dl_plugins.classification.data import (beam_offsets, cache_dir, frames_on_grid, hide_pixels, simulate,
                                                 straight_shadow)
from xfel_dl_plugins.classification.inputs import to_whole_photons
from xfel_dl_plugins.classification.metrics import classification_report
from xfel_dl_plugins.classification.runtime import confident_singles
from xfel_dl_plugins.stages.classification import CNNClassifier, matched_binning

#: The ``cnn_classifier`` filter's defaults, as a chain runs it.
STAGE_DEFAULTS = {name: CNNClassifier.params[name].default for name in ("min_probability", "max_ood")}

BLANK, OTHER = CLASS_NAMES.index("blank"), CLASS_NAMES.index("other")
PR772 = {"name": "pr772", "shape": "icosahedron", "material": "virus",
         "radius_nm": {"mean": 33.0, "sigma": 2.5, "min": 25.0, "max": 42.0}}
#: Held-out sets for the CNN and the baseline (seeds far from the training seeds).
TEST_SETS = {
    "pr772_realistic": {"config": {"sample": [PR772]}, "seed": 900_001, "expected_radius_nm": (25.0, 42.0)},
    "pr772_weak": {"config": {"sample": [PR772], "beam": {"pulse_energy_mJ": 0.5}}, "seed": 900_002,
                   "expected_radius_nm": (25.0, 42.0)},
    # A geometry no training frame had: detector at 1.06 m (the stages bin 3 x 3 instead of 2 x 2, so
    # the gaps, the central hole and a larger beam stop fall elsewhere on the model grid).
    "pr772_far_detector": {"config": {"sample": [PR772]}, "seed": 900_003, "expected_radius_nm": (25.0, 42.0),
                           "detector": {"pixel_size_m": 0.2e-3, "binning": 1, "shape": [384, 384],
                                        "distance_m": 1.06, "beam_stop_radius_m": 5.0e-3}},
    # A mask no training frame had, over the realistic set's frames (same seed): the shadow of a
    # beam-stop holder and two dead ASICs (see holder_mask).
    "pr772_holder_mask": {"config": {"sample": [PR772]}, "seed": 900_001, "expected_radius_nm": (25.0, 42.0),
                          "extra_mask": "holder"},
    # Another mask no training frame had, over the same frames: the round shadow of an aperture
    # (corners lost), a rectangular beam stop off the beam axis, 1 % dead pixels (see aperture_mask).
    "pr772_aperture_mask": {"config": {"sample": [PR772]}, "seed": 900_001, "expected_radius_nm": (25.0, 42.0),
                            "extra_mask": "aperture"},
    # A mask of kinds in neither the detector's masks nor the training augmentation: a 50-degree
    # sector shadow from the beam and a thin masked ring (see wedge_mask).
    "pr772_wedge_mask": {"config": {"sample": [PR772]}, "seed": 900_001, "expected_radius_nm": (25.0, 42.0),
                         "extra_mask": "wedge"},
}
#: Particle types absent from both training configs, for the few-shot embedding (and the CNN).
UNSEEN_TYPES = {
    "octahedron_protein": {"name": "octahedron_protein", "shape": "octahedron", "material": "protein",
                           "radius_nm": {"mean": 30.0, "sigma": 4.0, "min": 20.0, "max": 42.0}},
    "dodecahedron_virus": {"name": "dodecahedron_virus", "shape": "dodecahedron", "material": "virus",
                           "radius_nm": {"mean": 38.0, "sigma": 4.0, "min": 28.0, "max": 50.0}},
    "silica_spheroid": {"name": "silica_spheroid", "shape": "spheroid", "material": "silica",
                        "radius_nm": {"mean": 22.0, "sigma": 3.0, "min": 15.0, "max": 30.0},
                        "aspect": {"mean": 1.6, "sigma": 0.2, "min": 1.2, "max": 2.2}},
}
#: Particle types on which the few-shot rule and its regularisation were chosen: in neither training
#: nor the reported unseen types.
SELECTION_TYPES = {
    "iron_oxide_spheroid": {"name": "iron_oxide_spheroid", "shape": "spheroid", "material": "iron_oxide",
                            "radius_nm": {"mean": 18.0, "sigma": 3.0, "min": 12.0, "max": 26.0},
                            "aspect": {"mean": 2.0, "sigma": 0.3, "min": 1.4, "max": 2.8}},
    "silver_cube": {"name": "silver_cube", "shape": "cube", "material": "silver",
                    "radius_nm": {"mean": 20.0, "sigma": 3.0, "min": 14.0, "max": 28.0}},
}
BALANCED = {"blank": 0.25, "single": 0.25, "multiple": 0.25, "other": 0.25}
#: Test sets are simulated on native AGIPD pixels (200 um, AGIPD-1M gaps and central hole, beam stop)
#: and binned onto each model's grid by the stages' own ``bin_to_grid``, as assembled frames are at run
#: time: a model must not depend on how the simulator that trained it pixelated its frames.
EVAL_DETECTOR = {"pixel_size_m": 0.2e-3, "binning": 1, "shape": [256, 256]}
GRID_KEYS = ("size", "binning")


def cached_simulation(config: dict, n: int, seed: int) -> dict:
    """Simulator output (full grid), cached under the classification cache directory."""
    from xfel_dl_plugins.classification.data import _cache_key, simulator_version

    key = _cache_key({"config": config, "n": n, "seed": seed, "simulator": simulator_version()})
    path = cache_dir() / f"eval-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    out = simulate(config, n, seed)
    keep = {k: np.asarray(v) for k, v in out.items() if isinstance(v, np.ndarray) or isinstance(v, (list, tuple))}
    keep = {k: v for k, v in keep.items() if v.dtype != object}
    np.savez(path.with_suffix(".tmp.npz"), **keep)
    path.with_suffix(".tmp.npz").replace(path)
    return keep


# -- baseline ----------------------------------------------------------------------------------
def sim_geometry(config: dict, shape):
    from xfel_dl_plugins.io.geometry import ExperimentGeometry
    from xfel_dl_plugins.simulation.config import config_from_dict

    cfg = config_from_dict(config)
    d = cfg.detector
    centre = tuple(d.centre_px) if d.centre_px is not None else (shape[0] // 2, shape[1] // 2)
    return ExperimentGeometry.flat(shape, pixel_size_m=d.pixel_size_m, photon_energy_eV=cfg.beam.photon_energy_eV,
                                   distance_m=d.distance_m, beam_centre=centre)


def baseline_features(raw: dict, config: dict, binning: int) -> dict:
    """Lit pixels (several photon thresholds) and the sphere fit of every frame, on the simulator grid
    binned by ``binning``."""
    from xfel_dl_plugins.io.grid import bin_to_grid
    from xfel_dl_plugins.stages.base import FrameBatch, StageContext
    from xfel_dl_plugins.stages.hitfinding import LitPixelHitFinder
    from xfel_dl_plugins.stages.preprocessing import ReciprocalGrid
    from xfel_dl_plugins.stages.sizing import SphereSizeFit

    patterns = np.asarray(raw["patterns"], np.float32)
    valid = np.broadcast_to(np.asarray(raw["valid"], bool), patterns.shape)
    size = patterns.shape[1] // binning
    patterns, valid = bin_to_grid(patterns, valid, (patterns.shape[1] // 2, patterns.shape[2] // 2), size, binning)
    binned = {**config, "detector": {**config["detector"], "shape": [size, size],
                                     "pixel_size_m": config["detector"]["pixel_size_m"] * binning}}
    geom = sim_geometry(binned, patterns.shape[1:])
    ctx = StageContext(geometry=geom)
    n = len(patterns)
    ids = np.arange(n, dtype=np.uint64)
    batch = FrameBatch({"data": patterns, "valid": valid, "image": patterns, "image_valid": valid,
                        "train_id": ids, "pulse_id": ids, "cell_id": ids.astype(np.uint16)}, geometry=geom)
    lit = {}
    for threshold in (0.7, 1.5, 2.5, 4.0):
        hf = LitPixelHitFinder(ctx, photon_threshold=threshold, fixed_threshold=1)
        hf.setup()
        lit[threshold] = hf.process(batch)["lit_pixels"]
    size = min(patterns.shape[1:])
    grid = ReciprocalGrid(ctx, size=size - size % 2, binning=1)
    grid.setup()
    batch.fields.update({k: v for k, v in grid.process(batch).items() if k.startswith("pattern")})
    sizer = SphereSizeFit(ctx, radius_min_nm=5.0, radius_max_nm=300.0)
    sizer.setup()
    fit = sizer.process(batch)
    return {"lit": lit, "radius_nm": fit["radius_nm"], "fit_quality": fit["fit_quality"]}


def baseline_predict(features: dict, rule: dict) -> np.ndarray:
    """blank (no hit), single (hit + good sphere fit + radius in range) or other (any other hit)."""
    hit = features["lit"][rule["photon_threshold"]] > rule["lit_threshold"]
    lo, hi = rule["radius_nm"]
    single = hit & (features["fit_quality"] >= rule["fit_quality"]) & (features["radius_nm"] >= lo) & (features["radius_nm"] <= hi)
    return np.where(single, SINGLE, np.where(hit, OTHER, BLANK))


def tune_baseline(features: dict, labels: np.ndarray, radius_range) -> dict:
    """The baseline rule with the best single-hit F1 on a validation set (its best case)."""
    best, best_f1 = None, -1.0
    for threshold, lit in features["lit"].items():
        for lit_threshold in np.unique(np.quantile(lit, np.linspace(0.05, 0.95, 37)).astype(int)):
            for fq in np.linspace(0.3, 0.98, 35):
                rule = {"photon_threshold": threshold, "lit_threshold": int(lit_threshold),
                        "fit_quality": round(float(fq), 3), "radius_nm": tuple(radius_range)}
                f1 = single_f1(labels, baseline_predict(features, rule))
                if f1 > best_f1:
                    best, best_f1 = rule, f1
    return best


def singles_called_multiple_by_brightness(frames, pred) -> list:
    """Per quartile of photons on the model grid: (low, high, singles, of them called multiple)."""
    photons = frames.patterns.sum(axis=(1, 2))
    single = frames.labels == SINGLE
    edges = np.quantile(photons[single], np.linspace(0, 1, 5))
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        chosen = single & (photons >= lo) & (photons <= hi)
        rows.append((float(lo), float(hi), int(chosen.sum()), int(np.sum(pred[chosen] == CLASS_NAMES.index("multiple")))))
    return rows


def single_f1(labels, pred) -> float:
    tp = np.sum((pred == SINGLE) & (labels == SINGLE))
    return 2 * tp / max(np.sum(pred == SINGLE) + np.sum(labels == SINGLE), 1)


def single_f1_interval(labels, pred, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95 % interval of the single-hit F1 (frames resampled with replacement)."""
    rng = np.random.default_rng(seed)
    labels, pred = np.asarray(labels), np.asarray(pred)
    f1 = [single_f1(labels[i], pred[i]) for i in rng.integers(0, len(labels), (draws, len(labels)))]
    return float(np.quantile(f1, 0.025)), float(np.quantile(f1, 0.975))


# -- evaluations -------------------------------------------------------------------------------
#: A test set's validation twin (baseline tuning, few-shot support) has the test seed plus this.
VALIDATION_SEED_OFFSET = 17


def _offsets_m(shape, pixel_size_m: float):
    """(y, x) of every native pixel from the beam at the frame's centre, in metres."""
    y, x = beam_offsets(shape)
    return y * pixel_size_m, x * pixel_size_m


def holder_mask(shape, pixel_size_m: float, beam_stop_radius_m: float = 3.0e-3) -> np.ndarray:
    """True where a mask unlike any in training hides the detector (native pixels, beam at the centre):
    the 2 mm wide shadow of a rod holding the beam stop, from the beam to the edge at 35 degrees, and
    two dead 64 x 64-pixel AGIPD ASICs."""
    h, w = shape
    y, x = _offsets_m(shape, pixel_size_m)
    mask = straight_shadow(h, np.deg2rad(35.0), 2.0e-3 / pixel_size_m) & (np.hypot(x, y) > beam_stop_radius_m)
    mask[h // 2 + 20 : h // 2 + 84, w // 2 - 100 : w // 2 - 36] = True
    mask[h // 2 - 110 : h // 2 - 46, w // 2 + 30 : w // 2 + 94] = True
    return mask


def aperture_mask(shape, pixel_size_m: float) -> np.ndarray:
    """True where another unfamiliar mask hides the detector (native pixels, beam at the centre): beyond
    22 mm from the beam (an aperture's round shadow), a 4 x 8 mm beam stop centred 1 mm off the beam,
    and 1 % of the pixels dead (fixed draw)."""
    y, x = _offsets_m(shape, pixel_size_m)
    mask = np.hypot(x, y) > 22e-3
    mask |= (np.abs(x - 1e-3) < 2e-3) & (np.abs(y) < 4e-3)
    mask |= np.random.default_rng(7).random(shape) < 0.01
    return mask


def wedge_mask(shape, pixel_size_m: float) -> np.ndarray:
    """True where a third unfamiliar mask hides the detector (native pixels, beam at the centre): a
    50-degree sector from the beam (a nozzle or catcher shadow, 200-250 degrees) and a 1.2 mm wide
    ring at 15.4 mm from the beam (an ice-ring cut)."""
    y, x = _offsets_m(shape, pixel_size_m)
    angle = np.degrees(np.arctan2(y, x)) % 360
    r = np.hypot(x, y)
    return ((angle > 200) & (angle < 250) & (r > 3e-3)) | (np.abs(r - 15.4e-3) < 0.6e-3)


EXTRA_MASKS = {"holder": holder_mask, "aperture": aperture_mask, "wedge": wedge_mask}


def load_test_set(spec: dict, n: int, model_grid: dict, seed_offset: int = 0):
    """(raw simulation, config, geometry, binning, frames on the model grid binned as the stages bin them)."""
    config = {**spec["config"], "detector": spec.get("detector", EVAL_DETECTOR)}
    raw = cached_simulation(config, n, spec["seed"] + seed_offset)
    if "extra_mask" in spec:
        raw = hide_pixels(raw, EXTRA_MASKS[spec["extra_mask"]](raw["patterns"].shape[1:], config["detector"]["pixel_size_m"]))
    geometry = sim_geometry(config, raw["patterns"].shape[1:])
    binning = matched_binning(model_grid, geometry)  # as the stages choose it (binning = 0)
    return raw, config, geometry, binning, frames_on_grid(raw, config, {**model_grid, "binning": binning})


def cnn_decisions(model, patterns, valid, binning, restore_noise: bool = True):
    """(model outputs, CNN argmax, singles the stage filter keeps, stage-filter classes: dropped singles -> other)."""
    out = model.predict(patterns, valid, binning=binning, restore_noise=restore_noise)
    cnn_pred = out["class_index"]
    kept = confident_singles(out, STAGE_DEFAULTS["min_probability"], STAGE_DEFAULTS["max_ood"])
    return out, cnn_pred, kept, np.where(kept, SINGLE, np.where(cnn_pred == SINGLE, OTHER, cnn_pred))


def evaluate_cnn_and_baseline(model, n: int, n_validation: int, log) -> dict:
    """CNN, CNN stage filter and baseline on each test set of ``n`` frames (the baseline tuned on the
    set's validation twin of ``n_validation`` frames), as simulated and rounded to whole photons."""
    results = {}
    for name, spec in TEST_SETS.items():
        raw, config, geometry, binning, frames = load_test_set(spec, n, model.grid)
        t0 = time.perf_counter()
        out, cnn_pred, kept, cnn_filter = cnn_decisions(model, frames.patterns, frames.valid, binning)
        log(f"{name}: CNN on {n} frames in {time.perf_counter() - t0:.1f} s")
        whole = to_whole_photons(frames.patterns)
        # as the stage runs them (read-out noise restored), and as they are
        _, whole_pred, whole_kept, whole_filter = cnn_decisions(model, whole, frames.valid, binning)
        _, bare_pred, bare_kept, bare_filter = cnn_decisions(model, whole, frames.valid, binning, restore_noise=False)
        val_raw, _, _, _, val_frames = load_test_set(spec, n_validation, model.grid, VALIDATION_SEED_OFFSET)
        rule = tune_baseline(baseline_features(val_raw, config, binning), val_frames.labels, spec["expected_radius_nm"])
        base_pred = baseline_predict(baseline_features(raw, config, binning), rule)
        results[name] = {
            "n": n,
            "n_validation": n_validation,
            "binning": binning,
            "grid_size": int(model.size),
            "distance_m": geometry.distance_m,
            "cnn": classification_report(frames.labels, cnn_pred),
            "cnn_stage_filter": classification_report(frames.labels, cnn_filter),
            "baseline": classification_report(frames.labels, base_pred),
            "whole_photons": {"cnn": classification_report(frames.labels, whole_pred),
                              "cnn_stage_filter": classification_report(frames.labels, whole_filter),
                              "false_singles_cnn_stage_filter": int(np.sum(whole_kept & (frames.labels != SINGLE)))},
            "whole_photons_no_noise_restored": {
                "cnn": classification_report(frames.labels, bare_pred),
                "cnn_stage_filter": classification_report(frames.labels, bare_filter),
                "false_singles_cnn_stage_filter": int(np.sum(bare_kept & (frames.labels != SINGLE)))},
            "single_f1_interval_95": {"cnn": single_f1_interval(frames.labels, cnn_pred),
                                      "cnn_stage_filter": single_f1_interval(frames.labels, cnn_filter),
                                      "baseline": single_f1_interval(frames.labels, base_pred)},
            "baseline_rule": rule,
            "false_singles": {"cnn": int(np.sum((cnn_pred == SINGLE) & (frames.labels != SINGLE))),
                              "cnn_stage_filter": int(np.sum(kept & (frames.labels != SINGLE))),
                              "baseline": int(np.sum((base_pred == SINGLE) & (frames.labels != SINGLE)))},
            "mean_ood_score": float(out["ood_score"].mean()),
            "singles_called_multiple_by_brightness": singles_called_multiple_by_brightness(frames, cnn_pred),
        }
        log(f"{name}: single F1 CNN {results[name]['cnn']['per_class']['single']['f1']}, "
            f"baseline {results[name]['baseline']['per_class']['single']['f1']}; false singles {results[name]['false_singles']}")
    return results


def _fewshot_rules(embeddings, probabilities):
    """The few-shot rules compared: name -> (support indices, labels, query indices) -> predicted labels."""
    from xfel_dl_plugins.classification.fewshot import LinearProbeClassifier, PrototypeClassifier, support_features

    with_cnn, alone = support_features(embeddings, probabilities), support_features(embeddings)

    def linear(features):
        def rule(support, labels, query):
            clf = LinearProbeClassifier(features[support], labels)
            return clf.label_names[clf.predict(features[query])[0]].astype(int)
        return rule

    def neighbours(k):
        def rule(support, labels, query):
            clf = PrototypeClassifier(embeddings[support], labels, k=k)
            return clf.label_names[clf.predict(embeddings[query])[0]].astype(int)
        return rule

    return {"linear": linear(with_cnn), "linear_embedding_only": linear(alone), "knn3": neighbours(3),
            "prototype": neighbours(0)}


def evaluate_fewshot(encoder, classifier, types: dict, seed: int, n: int, repeats: int, log,
                     rounded: bool = False) -> dict:
    """Accuracy of each few-shot rule on frames of ``types`` (10, 20, 50 labelled frames per class),
    with ``rounded`` on the frames rounded to whole photons (support and query alike)."""
    results = {}
    for t, (name, species) in enumerate(types.items()):
        config = {"sample": [species], "hit_fractions": BALANCED, "detector": EVAL_DETECTOR}
        raw = cached_simulation(config, n, seed + t)
        frames = frames_on_grid(raw, config, encoder.grid)
        patterns = to_whole_photons(frames.patterns) if rounded else frames.patterns
        emb = encoder.embed(patterns, frames.valid)
        probabilities = classifier.predict(patterns, frames.valid)["probabilities"]
        rules = _fewshot_rules(emb, probabilities)
        entry = {"n": n, "cnn_accuracy": float(np.mean(probabilities.argmax(1) == frames.labels))}
        for shots in (10, 20, 50):
            accuracy = {rule: [] for rule in rules}
            for r in range(repeats):
                rng = np.random.default_rng(1000 * shots + r)
                support = np.concatenate([rng.permutation(np.flatnonzero(frames.labels == c))[:shots]
                                          for c in range(len(CLASS_NAMES))])
                query = np.setdiff1d(np.arange(len(frames)), support)
                for rule, predict in rules.items():
                    accuracy[rule].append(float(np.mean(predict(support, frames.labels[support], query) == frames.labels[query])))
            entry[f"{shots}_shot"] = {rule: {"mean": float(np.mean(a)), "min": float(np.min(a))} for rule, a in accuracy.items()}
        results[name] = entry
        log(f"few-shot {name}{' (whole photons)' if rounded else ''}: " + ", ".join(f"{s}-shot {entry[f'{s}_shot']['linear']['mean']:.3f}" for s in (10, 20, 50))
            + f" (linear rule); CNN {entry['cnn_accuracy']:.3f}")
    return results


def evaluate_adapted(encoder, classifier, n: int, n_validation: int, repeats: int, log) -> dict:
    """Single-hit F1 of the few-shot stage's default (linear) rule on each test set, its support drawn
    from the set's validation twin (another run of the same sample): what labelling a few frames of
    one's own run gives, next to the CNN alone."""
    from xfel_dl_plugins.classification.fewshot import LinearProbeClassifier, support_features

    results = {}
    for name, spec in TEST_SETS.items():
        binning, test = load_test_set(spec, n, encoder.grid)[3:]
        pool = load_test_set(spec, n_validation, encoder.grid, VALIDATION_SEED_OFFSET)[-1]
        test_features, pool_features = [
            support_features(encoder.embed(f.patterns, f.valid),
                             classifier.predict(f.patterns, f.valid, binning=binning)["probabilities"])
            for f in (test, pool)]
        entry = {}
        for shots in (10, 20, 50):
            f1, false_singles = [], []
            for r in range(repeats):
                rng = np.random.default_rng(1000 * shots + r)
                support = np.concatenate([rng.permutation(np.flatnonzero(pool.labels == c))[:shots]
                                          for c in range(len(CLASS_NAMES))])
                head = LinearProbeClassifier(pool_features[support], pool.labels[support])
                pred = head.label_names[head.predict(test_features)[0]].astype(int)
                f1.append(single_f1(test.labels, pred))
                false_singles.append(int(np.sum((pred == SINGLE) & (test.labels != SINGLE))))
            entry[f"{shots}_shot"] = {"single_f1_mean": float(np.mean(f1)), "single_f1_min": float(np.min(f1)),
                                      "false_singles_mean": float(np.mean(false_singles))}
        results[name] = entry
        log(f"adapted {name}: " + ", ".join(f"{s}-shot single F1 {entry[f'{s}_shot']['single_f1_mean']:.3f}" for s in (10, 20, 50)))
    return results


def measure_throughput(model, device: str, threads: int, log) -> dict:
    """Patterns/s of the classifier (input grid, batched) and of the lit-pixel baseline, same run, same data."""
    import torch

    from xfel_dl_plugins.stages.base import FrameBatch, StageContext
    from xfel_dl_plugins.stages.hitfinding import LitPixelHitFinder

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    size = model.size
    n = 4096 if device == "cuda" else 1024
    photonised = rng.poisson(0.3, (n, size, size)).astype(np.float32)
    patterns = photonised + rng.normal(0, 0.3, photonised.shape).astype(np.float32)  # calibrated: read-out noise
    valid = np.ones_like(patterns, bool)
    model.predict(patterns[:256], valid[:256], batch_size=256)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    result = {"device": device, "threads": threads, "input": f"{size}x{size}", "views": model.views}
    batch_sizes = (64, 512) if device == "cpu" else (512, 4096)
    for label, frames in (("", patterns), ("_photonised", photonised)):  # photonised: read-out noise restored first
        for batch_size in batch_sizes[-1:] if label else batch_sizes:
            t0 = time.perf_counter()
            model.predict(frames, valid, batch_size=batch_size)
            if device == "cuda":
                torch.cuda.synchronize()
            result[f"classifier_patterns_per_s_batch{batch_size}{label}"] = n / (time.perf_counter() - t0)
    # The lit-pixel baseline on full AGIPD-1M frames (16 x 512 x 128 calibrated pixels), as it runs in a chain.
    frames = rng.poisson(0.02, (32, 16, 512, 128)).astype(np.float32)
    ids = np.arange(32, dtype=np.uint64)
    batch = FrameBatch({"data": frames, "valid": np.ones(frames.shape, bool), "train_id": ids, "pulse_id": ids,
                        "cell_id": ids.astype(np.uint16)})
    hf = LitPixelHitFinder(StageContext())
    hf.setup()
    t0 = time.perf_counter()
    for _ in range(4):
        hf.process(batch)
    result["litpixel_agipd1m_frames_per_s"] = 4 * 32 / (time.perf_counter() - t0)
    # The classifier stage's own binning of assembled AGIPD-1M images (1256 x 1092) onto its grid.
    from xfel_dl_plugins.io.grid import bin_to_grid

    images = rng.poisson(0.02, (32, 1256, 1092)).astype(np.float32)
    t0 = time.perf_counter()
    bin_to_grid(images, np.ones(images.shape, bool), (628.0, 546.0), size, model.binning)
    result["binning_assembled_frames_per_s"] = 32 / (time.perf_counter() - t0)
    log("throughput: " + json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}))
    return result


# -- report ------------------------------------------------------------------------------------
def _fmt(x):
    return "-" if x is None else f"{x:.3f}"


def markdown(results: dict, command: str) -> str:
    lines = ["## Single-hit classification", "",
             f"Reproduce: `{command}` (about 15 min on 2 cores once the test sets are cached, about 20 min from scratch; simulated sets are cached under "
             "`$XFEL_DL_CACHE`, default `/tmp/xfel_dl_classify_cache`). All sets are simulated with seeds disjoint "
             "from training; the few-shot sets use particle types absent from training. The machine is shared by "
             "several engineers, so throughput is only compared side by side within one run.", "",
             "Methods:", "",
             "- **CNN** (`cnn_classifier`, weights `spi_classifier`): argmax of the calibrated probabilities. "
             "**CNN stage filter**: what the stage keeps with its defaults (single, P(single) >= "
             f"{STAGE_DEFAULTS['min_probability']}, OOD score <= {STAGE_DEFAULTS['max_ood']}); frames it drops "
             "count as 'other'.",
             "- **Baseline**: lit-pixel hit finder (`litpixel_hitfinder`) + sphere fit (`sphere_sizer`) on the "
             "frames binned as the CNN stage bins them (128x128, q up to 1.1 1/nm); single = hit and fit quality above a cut and radius in the sample's "
             "known range. Its photon threshold, lit-pixel threshold and fit-quality cut are tuned on a separate "
             "validation set of the same kind to maximise single-hit F1 (its best case).",
             "- **Few-shot** (`fewshot_classifier`, weights `spi_encoder` and `spi_classifier`): N labelled frames per "
             "class of the new particle type; a linear head fitted on them (default), or nearest neighbours; no "
             "network retrained.",
             "- Training and test frames come from the same simulator version (source hash in the model cards) "
             "with disjoint seeds; the test sets have their own sample configs (PR772 of a narrow size range, "
             "the default contaminants and background), not the training mixture.", ""]
    for name, r in results.get("cnn", {}).items():
        lines += [f"### Test set `{name}` ({r['n']} frames, detector at {r['distance_m']} m, binned "
                  f"{r['binning']}x{r['binning']} onto the {r['grid_size']}x{r['grid_size']} model grid)", "",
                  "| method | class | precision | recall | F1 | support |", "|---|---|---|---|---|---|"]
        for method in ("cnn", "cnn_stage_filter", "baseline"):
            for cls, m in r[method]["per_class"].items():
                if method == "baseline" and cls == "multiple":
                    continue
                lines.append(f"| {method} | {cls} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['f1'])} | {m['support']} |")
        fs = r["false_singles"]
        ratio = fs["baseline"] / max(fs["cnn_stage_filter"], 1)
        ci = r["single_f1_interval_95"]
        lines += ["", "Single F1, bootstrap 95 % interval over the frames: " + ", ".join(
            f"{method} {lo:.3f}-{hi:.3f}" for method, (lo, hi) in ci.items()) + ".",
                  "", f"False singles: CNN {fs['cnn']}, CNN stage filter {fs['cnn_stage_filter']}, "
                  f"baseline {fs['baseline']} ({ratio:.1f}x fewer with the CNN filter). "
                  f"Baseline rule (tuned on a validation set of {r['n_validation']} frames): `{json.dumps(r['baseline_rule'])}`.", "",
                  "Confusion matrices (rows true, columns predicted; order " + ", ".join(CLASS_NAMES) + "):", "",
                  f"- CNN: `{r['cnn']['confusion']}`", f"- baseline: `{r['baseline']['confusion']}` "
                  "(the baseline has no 'multiple': non-single hits count as 'other')", "",
                  "The same frames rounded to whole photons (photonised data; Poisson-only simulators such as Condor), "
                  + "; ".join(f"{how}: single F1 CNN {_fmt(w['cnn']['per_class']['single']['f1'])}, stage filter "
                              f"{_fmt(w['cnn_stage_filter']['per_class']['single']['f1'])} with "
                              f"{w['false_singles_cnn_stage_filter']} false singles, CNN confusion `{w['cnn']['confusion']}`"
                              for how, w in (("as the stage runs them (read-out noise restored)", r["whole_photons"]),
                                             ("without the noise restored", r["whole_photons_no_noise_restored"]))) + ".", "",
                  "CNN singles called multiple by brightness (quartiles of photons on the model grid): " + ", ".join(
                      f"{lo:.0f}-{hi:.0f}: {bad}/{n}" for lo, hi, n, bad in r["singles_called_multiple_by_brightness"]) + ".", ""]
    for key, title in (("fewshot", "Few-shot classification of unseen particle types"),
                       ("fewshot_selection", "Few-shot rule selection types (not in training, not in the table above)"),
                       ("fewshot_whole_photons", "Few-shot classification of unseen particle types, frames rounded to whole photons")):
        if key not in results:
            continue
        lines += [f"### {title}", "",
                  "Accuracy over the four classes (balanced) of frames not in the support set; support drawn at "
                  "random per class, mean (and worst) over the draws. *linear* (stage default): softmax regression "
                  "fitted on the support frames' unit embeddings and the CNN's calibrated log-probabilities; "
                  "*emb. only*: the same on the embeddings alone; *kNN-3*: vote of the 3 most similar support frames; "
                  "*prototype*: nearest class mean; *CNN*: the classifier without support.", "",
                  "| particle type | linear 10-shot | linear 20-shot | linear 50-shot | 20-shot emb. only | 20-shot kNN-3 | "
                  "20-shot prototype | CNN |", "|---|---|---|---|---|---|---|---|"]
        for name, e in results[key].items():
            cells = [f"{e[f'{s}_shot']['linear']['mean']:.3f} (min {e[f'{s}_shot']['linear']['min']:.3f})" for s in (10, 20, 50)]
            cells += [f"{e['20_shot'][rule]['mean']:.3f}" for rule in ("linear_embedding_only", "knn3", "prototype")]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(e['cnn_accuracy'])} |")
        lines.append("")
    if "adapted" in results:
        lines += ["### Adapted to the sample: the few-shot stage with labelled frames of another run", "",
                  "Single-hit F1 on each test set of the few-shot stage's default rule (linear head on the embeddings "
                  "and the CNN's log-probabilities), its support N labelled frames per class drawn from the set's "
                  "validation twin (the same sample simulated with another seed), mean (and worst) over the draws; "
                  "false singles as a mean over the draws. Compare with the CNN stage filter above.", "",
                  "| test set | 10-shot | 20-shot | 50-shot | 20-shot false singles | CNN stage filter |",
                  "|---|---|---|---|---|---|"]
        for name, e in results["adapted"].items():
            cells = [f"{e[f'{s}_shot']['single_f1_mean']:.3f} (min {e[f'{s}_shot']['single_f1_min']:.3f})" for s in (10, 20, 50)]
            cnn = results.get("cnn", {}).get(name)
            cnn_cell = (f"{_fmt(cnn['cnn_stage_filter']['per_class']['single']['f1'])}, "
                        f"{cnn['false_singles']['cnn_stage_filter']} false singles") if cnn else "-"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {e['20_shot']['false_singles_mean']:.1f} | {cnn_cell} |")
        lines.append("")
    for t in results.get("throughput", []):
        lines += [f"### Throughput ({t['device']}, {t['threads']} threads, input {t['input']}, {t.get('views', 1)} views per frame)", "",
                  "| what | frames/s |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in t.items() if k.endswith("_per_s") or "_per_s_" in k]
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="frames per test set")
    parser.add_argument("--n-validation", type=int, default=1000,
                        help="frames per validation twin (baseline tuning, few-shot support pool)")
    parser.add_argument("--n-fewshot", type=int, default=400, help="frames per unseen particle type")
    parser.add_argument("--repeats", type=int, default=5, help="random support draws per shot count")
    parser.add_argument("--quick", action="store_true", help="small sets (smoke run)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("cnn", "fewshot", "throughput"))
    parser.add_argument("--views", type=int, default=2, choices=(1, 2, 4), help="views per frame (stage default 2)")
    parser.add_argument("--classifier-weights", default=None, help="path of classifier weights (default: packaged)")
    parser.add_argument("--encoder-weights", default=None, help="path of encoder weights (default: packaged)")
    parser.add_argument("--out", help="write the markdown section here")
    parser.add_argument("--json", help="write all numbers here")
    args = parser.parse_args()
    if args.quick:
        args.n, args.n_validation, args.n_fewshot, args.repeats = 400, 400, 320, 2
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from xfel_dl_plugins.classification.runtime import ClassifierModel, EncoderModel

    torch.set_num_threads(args.threads)
    classifier = ClassifierModel(path=args.classifier_weights, device=args.device, views=args.views)
    results = {}
    if args.only in (None, "cnn"):
        results["cnn"] = evaluate_cnn_and_baseline(classifier, args.n, args.n_validation, print)
    if args.only in (None, "fewshot"):
        encoder = EncoderModel(path=args.encoder_weights, device=args.device)
        results["fewshot"] = evaluate_fewshot(encoder, classifier, UNSEEN_TYPES, 910_000, args.n_fewshot, args.repeats, print)
        results["adapted"] = evaluate_adapted(encoder, classifier, args.n, args.n_validation, args.repeats, print)
        results["fewshot_selection"] = evaluate_fewshot(encoder, classifier, SELECTION_TYPES, 920_000, args.n_fewshot,
                                                        args.repeats, print)
        results["fewshot_whole_photons"] = evaluate_fewshot(encoder, classifier, UNSEEN_TYPES, 910_000, args.n_fewshot,
                                                            args.repeats, print, rounded=True)
    if args.only in (None, "throughput"):
        results["throughput"] = [measure_throughput(classifier, args.device, args.threads, print)]
    command = "PYTHONPATH=. python benchmarks/eval_classifier.py" + (" --quick" if args.quick else "") + (
        f" --n {args.n}" if args.n != 5000 and not args.quick else "") + (
        f" --views {args.views}" if args.views != 2 else "") + (
        f" --out {args.out}" if args.out else "")
    if args.out:
        Path(args.out).write_text(markdown(results, command) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
