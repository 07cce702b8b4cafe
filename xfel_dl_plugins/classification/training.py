"""Train the classifier or the embedding encoder from a TOML config, reproducibly from its seed.

``train_from_config(config_path, out_dir)`` simulates (or reads from the cache) the training and
validation frames, trains on the CPU with augmentation, calibrates, and writes
``<name>.safetensors`` + ``<name>.json`` (architecture, grid, calibration, data config, seed,
metrics) + ``<name>.md`` (model card) into ``out_dir``. Run as
``python -m xfel_dl_plugins.classification.training CONFIG.toml --out DIR``.

* classifier: class-balanced cross-entropy; then the softmax temperature minimising the validation
  negative log-likelihood, and quantiles of the validation energy score for the OOD score.
* embedding: supervised contrastive loss (Khosla et al. 2020) on unit vectors, labels = hit class
  and particle type (so that particle types stay apart and an unseen type forms its own cluster).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from ..errors import XfelDLError
from ..learned_weights import save_weights
from . import CLASS_NAMES
from .data import AugmentConfig, Augmenter, FrameSet, simulated_frames, simulator_version
from .inputs import VIEW_COUNTS, average_over_views, network_input
from .metrics import classification_report, expected_calibration_error

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def load_config(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise XfelDLError(f"training config not found: {path}")
    try:
        cfg = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise XfelDLError(f"{path}: invalid TOML: {exc}") from None
    for section in ("model", "grid", "data", "train"):
        if section not in cfg:
            raise XfelDLError(f"{path}: missing section [{section}]")
    if cfg["model"].get("type") not in ("classifier", "embedding"):
        raise XfelDLError(f"{path}: [model] type must be 'classifier' or 'embedding'")
    return cfg


def training_frames(cfg: dict, log=print) -> tuple[FrameSet, FrameSet]:
    """The training and validation sets of a config (simulated once, then cached)."""
    data = cfg["data"]
    t0 = time.perf_counter()
    grid = cfg["grid"]
    pinned = data.get("simulator_version")
    train = simulated_frames(data["simulation"], int(data["n_train"]), int(data["seed"]), grid, simulator=pinned,
                             log=log)
    val = simulated_frames(data.get("validation", data["simulation"]), int(data["n_val"]), int(data["seed"]) + 1_000_003,
                           grid, simulator=pinned, log=log)
    size = int(cfg["grid"]["size"])
    for name, frames in (("training", train), ("validation", val)):
        if frames.patterns.shape[1:] != (size, size):
            raise XfelDLError(f"simulated {name} frames are {frames.patterns.shape[1:]}, config grid.size is {size}")
    log(f"data: {len(train)} training / {len(val)} validation frames in {time.perf_counter() - t0:.0f} s; "
        f"training classes {np.bincount(train.labels, minlength=len(CLASS_NAMES)).tolist()}")
    return train, val


def _augment_config(cfg: dict) -> AugmentConfig:
    known = {f.name for f in fields(AugmentConfig)}
    given = cfg.get("augment", {})
    unknown = sorted(set(given) - known)
    if unknown:
        raise XfelDLError(f"unknown [augment] option {unknown[0]!r} (known: {', '.join(sorted(known))})")
    if "multiple_keep" in given:
        given = {**given, "multiple_keep": tuple(given["multiple_keep"])}
    return AugmentConfig(**given)


def _arch(cfg: dict) -> dict:
    m = cfg["model"]
    arch = {"type": m["type"], "in_channels": 2, "layers": [list(map(int, layer)) for layer in m["layers"]],
            "hidden": int(m["hidden"]), "input_size": int(cfg["grid"]["size"]), "rings": int(m.get("rings", 0))}
    if m["type"] == "classifier":
        arch.update(n_classes=len(CLASS_NAMES), dropout=float(m.get("dropout", 0.2)))
    else:
        arch.update(embedding_dim=int(m["embedding_dim"]))
    return arch


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for start in range(0, n - batch_size + 1, batch_size):  # drop the last partial batch (BatchNorm)
        yield order[start : start + batch_size]


def _forward_all(model, frames: FrameSet, batch_size: int = 512, views: int = 1) -> np.ndarray:
    """Network outputs for all frames, averaged over ``views`` orientations (see ``average_over_views``)."""
    import torch

    def forward(x):
        return model(torch.from_numpy(x)).numpy()

    model.eval()
    with torch.inference_mode():
        return np.concatenate([average_over_views(forward, network_input(frames.patterns[s : s + batch_size],
                                                                         frames.valid[s : s + batch_size]), views)
                               for s in range(0, len(frames), batch_size)])


def supcon_loss(embeddings, labels, temperature: float):
    """Supervised contrastive loss: pull together unit vectors of the same label, push the rest apart."""
    import torch

    sim = embeddings @ embeddings.T / temperature
    n = len(labels)
    self_mask = torch.eye(n, dtype=torch.bool)
    sim = sim.masked_fill(self_mask, -1e9)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positives.sum(1)
    has = count > 0
    return -((log_prob * positives).sum(1)[has] / count[has]).mean()


def embedding_labels(frames: FrameSet) -> np.ndarray:
    """Integer labels for metric learning: (class, particle type); blanks share one label."""
    keys = np.array([
        CLASS_NAMES[c] if CLASS_NAMES[c] == "blank" else f"{CLASS_NAMES[c]}/{g}"
        for c, g in zip(frames.labels, frames.groups)
    ])
    return np.unique(keys, return_inverse=True)[1]


def brightness_balancing_weights(frames: FrameSet, n_bins: int = 40, clip: tuple = (0.1, 10.0)) -> np.ndarray:
    """Per-frame loss weights under which singles and multiples have the same photon-count distribution.

    Multiple hits are brighter than single hits of the same sample, but how bright a frame is depends
    as much on the fluence, the particle's place in the focus and its size and material, all of which
    change from one experiment to the next. Weighting each single and multiple frame by
    p(bin) N_class / n_class(bin), over quantile bins of the total photons of both classes together,
    leaves the network nothing to learn from the photon count alone, so it must read the class from
    the pattern's shape. Other classes keep weight 1.
    """
    single, multiple = CLASS_NAMES.index("single"), CLASS_NAMES.index("multiple")
    weights = np.ones(len(frames), dtype=np.float64)
    if not np.any(frames.labels == single) or not np.any(frames.labels == multiple):
        return weights
    balanced = np.isin(frames.labels, (single, multiple))
    photons = np.sum(frames.patterns, axis=(1, 2), where=frames.valid, dtype=np.float64)
    edges = np.quantile(photons[balanced], np.linspace(0, 1, n_bins + 1)[1:-1])
    bins = np.searchsorted(edges, photons)
    pooled = np.bincount(bins[balanced], minlength=n_bins) / balanced.sum()
    for c in (single, multiple):
        members = frames.labels == c
        per_bin = np.bincount(bins[members], minlength=n_bins)
        weights[members] = (pooled * members.sum() / np.maximum(per_bin, 1))[bins[members]]
    return np.clip(weights, *clip)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The softmax temperature minimising the negative log-likelihood (grid search in log T)."""
    temps = np.exp(np.linspace(np.log(0.25), np.log(8.0), 241))
    z = logits.astype(np.float64)
    nll = []
    for t in temps:
        zt = z / t
        lse = zt.max(1) + np.log(np.exp(zt - zt.max(1, keepdims=True)).sum(1))
        nll.append(np.mean(lse - zt[np.arange(len(labels)), labels]))
    return float(temps[int(np.argmin(nll))])


def _calibration(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Softmax temperature (validation NLL) and quantiles of the energy score for the OOD score."""
    from .runtime import energy_score

    t = fit_temperature(logits, labels)
    energy = np.sort(energy_score(logits, t))
    return {"temperature": t, "energy_quantiles": [round(float(e), 5) for e in np.quantile(energy, np.linspace(0, 1, 201))]}


def train_from_config(config_path, out_dir, model: str | None = None, log=print) -> dict:
    """Train the model of ``config_path`` and write its weights, sidecar and model card into ``out_dir``.

    ``model`` ("classifier" or "embedding"), when given, must match the config's ``[model] type``.
    """
    import torch

    from .models import build_model, fused_state
    from .runtime import softmax

    cfg = load_config(config_path)
    if model is not None and model != cfg["model"]["type"]:
        raise XfelDLError(f"{config_path} trains a {cfg['model']['type']!r} model, not {model!r}")
    tcfg = cfg["train"]
    seed = int(tcfg["seed"])
    torch.set_num_threads(int(tcfg.get("threads", 1)))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    train, val = training_frames(cfg, log)
    augment = Augmenter(_augment_config(cfg), rng)
    # The validation frames are augmented once, with their own fixed seed: calibration then sees
    # the same kind of frames (missing panels, noise) as training and as real data.
    val_aug = FrameSet(*Augmenter(_augment_config(cfg), np.random.default_rng(seed + 1))(val.patterns, val.valid, val.labels),
                       val.labels, val.groups, val.radius_nm)

    arch = _arch(cfg)
    net = build_model(arch)
    channels_last = bool(tcfg.get("channels_last", False))  # ~1.6x faster on the CPU; another (deterministic) rounding
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    epochs, batch_size = int(tcfg["epochs"]), int(tcfg["batch_size"])
    steps = epochs * (len(train) // batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=float(tcfg["learning_rate"]), weight_decay=float(tcfg.get("weight_decay", 1e-4)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(tcfg["learning_rate"]), total_steps=steps, pct_start=0.15)
    is_classifier = arch["type"] == "classifier"
    if is_classifier:
        counts = np.bincount(train.labels, minlength=len(CLASS_NAMES)).astype(np.float64)
        class_weight = torch.tensor(len(train) / (len(CLASS_NAMES) * np.maximum(counts, 1)), dtype=torch.float32)
        targets_all = train.labels
        # optional: photon count alone says nothing about single vs multiple (see brightness_balancing_weights)
        sample_weight = (torch.from_numpy(brightness_balancing_weights(train).astype(np.float32))
                         if tcfg.get("brightness_balance", False) else None)
    else:
        targets_all = embedding_labels(train)
        temperature = float(tcfg.get("contrastive_temperature", 0.1))
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        losses = []
        for idx in _batches(len(train), batch_size, rng):
            p, v = augment(train.patterns[idx], train.valid[idx], train.labels[idx])
            x = torch.from_numpy(network_input(p, v))
            y = torch.from_numpy(targets_all[idx])
            out = net(x)
            if not is_classifier:
                loss = supcon_loss(out, y, temperature)
            elif sample_weight is None:
                loss = torch.nn.functional.cross_entropy(out, y, weight=class_weight)
            else:  # the weighted mean cross_entropy takes, with per-frame weights
                w = class_weight[y] * sample_weight[torch.from_numpy(idx)]
                loss = (torch.nn.functional.cross_entropy(out, y, reduction="none") * w).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        msg = f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f} ({time.perf_counter() - t0:.0f} s)"
        if is_classifier:
            pred = _forward_all(net, val_aug).argmax(1)
            msg += f", validation accuracy {np.mean(pred == val.labels):.4f}"
        log(msg)
    train_seconds = time.perf_counter() - t0

    config = {
        "arch": {**arch, "fused": True},
        "grid": dict(cfg["grid"]),
        "class_names": list(CLASS_NAMES),
        "training": {"config": cfg, "seed": seed, "train_seconds": round(train_seconds, 1),
                     "simulator_version": cfg["data"].get("simulator_version") or simulator_version(),
                     "torch_version": torch.__version__, "augment": asdict(_augment_config(cfg))},
    }
    if is_classifier:
        logits = _forward_all(net, val_aug)
        t = fit_temperature(logits, val.labels)
        probs = softmax(logits, t)
        clean = softmax(_forward_all(net, val), t)
        # One calibration per number of averaged views: averaged logits are less extreme.
        config["calibration"] = {**_calibration(logits, val.labels), "by_views": {
            str(v): _calibration(logits if v == 1 else _forward_all(net, val_aug, views=v), val.labels) for v in VIEW_COUNTS}}
        config["metrics"] = {
            "validation_augmented": classification_report(val.labels, probs.argmax(1)),
            "validation_clean": classification_report(val.labels, clean.argmax(1)),
            "ece_before_temperature": expected_calibration_error(softmax(logits, 1.0), val.labels),
            "ece_after_temperature": expected_calibration_error(probs, val.labels),
        }
    else:
        config["metrics"] = _fewshot_validation(net, val_aug, rng)
    name = cfg["model"]["name"]
    digest = save_weights(out_dir / f"{name}.safetensors", fused_state(net.to(memory_format=torch.contiguous_format)), config)
    (out_dir / f"{name}.md").write_text(model_card(name, config, config_path, digest))
    log(f"wrote {out_dir / name}.safetensors (sha256 {digest[:12]}…) in {train_seconds:.0f} s of training")
    return config


def _fewshot_validation(model, frames: FrameSet, rng: np.random.Generator, shots: int = 20) -> dict:
    """Hit-class accuracy of nearest-prototype classification per particle type with ``shots`` labels per class."""
    from .fewshot import PrototypeClassifier

    emb = _forward_all(model, frames)
    accs = []
    for group in np.unique(frames.groups):
        idx = np.flatnonzero((frames.groups == group) | (frames.labels == CLASS_NAMES.index("blank")))
        support, query = [], []
        for c in np.unique(frames.labels[idx]):
            members = rng.permutation(idx[frames.labels[idx] == c])
            if len(members) > shots:
                support += list(members[:shots])
                query += list(members[shots:])
        if len(set(frames.labels[support])) < 2 or not query:
            continue
        clf = PrototypeClassifier(emb[support], frames.labels[support])
        pred = clf.label_names[clf.predict(emb[query])[0]].astype(int)
        accs.append(float(np.mean(pred == frames.labels[query])))
    return {"fewshot_accuracy_20_shot_mean_over_types": float(np.mean(accs)) if accs else float("nan"), "n_types": len(accs)}


def model_card(name: str, config: dict, config_path, digest: str) -> str:
    """Markdown model card: purpose, input, training data and seed, metrics, how to reproduce."""
    import json

    arch, grid, tr = config["arch"], config["grid"], config["training"]
    lines = [
        f"# Model card: {name}",
        "",
        f"- Type: {arch['type']} ({'logits over ' + ', '.join(CLASS_NAMES) if arch['type'] == 'classifier' else str(arch.get('embedding_dim')) + '-d unit embedding'})",
        f"- Architecture: {json.dumps(arch)}",
        f"- Input: {grid['size']}x{grid['size']} beam-centred grid, {grid['binning']}x{grid['binning']} binned detector pixels; "
        "channels log1p(photons)/6 on valid pixels and the validity mask.",
        f"- Grid geometry at training: {json.dumps({k: v for k, v in grid.items() if k not in ('size', 'binning')})}",
        f"- Weights sha256: `{digest}`",
        f"- Training: seed {tr['seed']}, {tr['train_seconds']} s on the CPU, torch {tr['torch_version']}",
        f"- Simulator source hash (`xfel_dl_plugins.classification.data.simulator_version()`): {tr.get('simulator_version')}",
        f"- Data config: `{json.dumps(tr['config']['data'])}`",
        f"- Augmentation: `{json.dumps(tr['augment'])}`",
    ]
    if "calibration" in config:
        by_views = config["calibration"].get("by_views", {})
        per_view = "; per number of averaged views: " + ", ".join(f"{v}: {c['temperature']:.3f}" for v, c in by_views.items()) if by_views else ""
        lines.append(f"- Calibration: softmax temperature {config['calibration']['temperature']:.3f} (validation NLL){per_view}")
    lines += ["", "## Validation metrics", "", "```", json.dumps(config["metrics"], indent=1), "```", "",
              "## Reproduce", "", f"    xfel-dl train {arch['type']} {config_path} --out-dir DIR",
              f"    # or: python -m xfel_dl_plugins.classification.training {config_path} --out DIR", "",
              "Training is deterministic for a given seed, torch version and simulator version (source hash above): "
              "simulated frames are regenerated when the simulator code changes.", "",
              "Intended use: classify single-particle XFEL frames into blank / single / multiple / other. "
              "Trained on simulated data only: check the OOD score and a few labelled frames on a new sample.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="training config (TOML)")
    parser.add_argument("--out", default=".", help="output directory for weights, sidecar and model card")
    args = parser.parse_args(argv)
    try:
        train_from_config(args.config, args.out)
    except XfelDLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
