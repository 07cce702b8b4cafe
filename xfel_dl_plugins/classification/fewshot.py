"""Few-shot classification: label new frames from a small labelled support set, no network retrained.

The support set is embedded once with the encoder (:class:`.runtime.EncoderModel`). Rules:

* ``linear`` (:class:`LinearProbeClassifier`): a softmax regression fitted in milliseconds on the
  support frames' features: their unit embeddings and the calibrated log-probabilities of the CNN
  classifier (:func:`support_features`). The CNN knows what blank, single, multiple and other look
  like in general; the embedding tells the new sample's particles apart; the fit weighs the two.
* ``knn`` / ``prototype`` (:class:`PrototypeClassifier`): the majority label of the ``k`` most
  similar support frames, or the nearest class prototype (mean of that class's unit embeddings).
Supports come from a labelled dataset file (:func:`read_labelled_dataset`) or a CSV of
``trainId,pulseId,label`` rows naming frames of a run (:func:`read_support_csv`,
:func:`frames_for_ids`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputDataError

#: How the few-shot stage labels queries (see the module docstring); the first is the default.
FEWSHOT_RULES = ("linear", "knn", "prototype")


@dataclass
class SupportSet:
    """Support frames on the model grid with their labels (strings)."""

    patterns: np.ndarray  # (n, S, S) photons
    valid: np.ndarray  # (n, S, S) bool
    labels: np.ndarray  # (n,) str

    def __post_init__(self):
        if not (len(self.patterns) == len(self.valid) == len(self.labels)):
            raise InputDataError(
                f"support set has {len(self.patterns)} patterns, {len(self.valid)} masks and {len(self.labels)} labels"
            )
        if len(self.labels) == 0:
            raise InputDataError("the support set is empty")


class PrototypeClassifier:
    """Nearest-prototype (``k = 0``) or k-nearest-neighbour classifier on unit embeddings."""

    def __init__(self, embeddings: np.ndarray, labels, k: int = 0):
        embeddings = _normalise(np.asarray(embeddings, dtype=np.float32))
        labels = np.asarray(labels).astype(str)
        self.label_names, label_index = np.unique(labels, return_inverse=True)
        if len(self.label_names) < 2:
            raise InputDataError(f"the support set needs at least 2 labels, got {list(self.label_names)}")
        self.k = int(k)
        self.support, self.support_index = embeddings, label_index
        self.prototypes = _normalise(
            np.stack([embeddings[label_index == i].mean(axis=0) for i in range(len(self.label_names))])
        )

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """``(n, n_labels)`` cosine similarity to each prototype, or kNN vote fractions with ``k > 0``."""
        queries = _normalise(np.asarray(queries, dtype=np.float32))
        if self.k <= 0:
            return queries @ self.prototypes.T
        sim = queries @ self.support.T
        k = min(self.k, sim.shape[1])
        nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        votes = np.zeros((len(queries), len(self.label_names)), dtype=np.float32)
        np.add.at(votes, (np.repeat(np.arange(len(queries)), k), self.support_index[nearest].ravel()), 1.0 / k)
        # Break ties by the prototype similarity (small weight).
        return votes + 1e-3 * (queries @ self.prototypes.T)

    def predict(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Label index of each query and its cosine similarity to the chosen prototype."""
        index = self.scores(queries).argmax(axis=1)
        return index, self.similarity(queries, index)

    def similarity(self, queries: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Cosine similarity of each query to the prototype of label ``index`` (low: unlike that label's frames)."""
        sim = _normalise(np.asarray(queries, np.float32)) @ self.prototypes.T
        return sim[np.arange(len(index)), index]


def support_features(embeddings: np.ndarray, probabilities: np.ndarray | None = None) -> np.ndarray:
    """Features of the linear rule: unit embeddings, with the classifier's log-probabilities (clipped at
    log 1e-6) appended when given."""
    features = _normalise(np.asarray(embeddings, np.float32))
    if probabilities is None:
        return features
    return np.hstack([features, np.log(np.clip(np.asarray(probabilities, np.float32), 1e-6, 1.0))])


class LinearProbeClassifier:
    """Softmax regression on support-set features (:func:`support_features`), fitted by L-BFGS with an
    L2 penalty ``l2`` on the weights (not the biases): deterministic, milliseconds for a few hundred
    frames. The rule was chosen on particle types that are in neither training nor evaluation
    (iron-oxide spheroids, silver cubes; see docs/classification.md); ``l2`` from 0.01 to 1 scored
    alike there (10- and 20-shot accuracy within 0.003), 0.1 is the middle."""

    def __init__(self, features: np.ndarray, labels, l2: float = 0.1):
        from scipy.optimize import minimize

        x = np.asarray(features, np.float64)
        labels = np.asarray(labels).astype(str)
        self.label_names, y = np.unique(labels, return_inverse=True)
        if len(self.label_names) < 2:
            raise InputDataError(f"the support set needs at least 2 labels, got {list(self.label_names)}")
        if x.ndim != 2 or len(x) != len(y) or not np.isfinite(x).all():
            raise InputDataError(f"support features must be finite, (n_support, n_features), got shape {x.shape}")
        n, d, c = len(y), x.shape[1], len(self.label_names)
        onehot = np.eye(c)[y]

        def loss(w):
            w = w.reshape(d + 1, c)
            z = x @ w[:-1] + w[-1]
            z -= z.max(axis=1, keepdims=True)
            log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            g = (np.exp(log_p) - onehot) / n
            grad = np.vstack([x.T @ g + l2 * w[:-1], g.sum(axis=0)])
            return -(log_p * onehot).sum() / n + 0.5 * l2 * (w[:-1] ** 2).sum(), grad.ravel()

        w = minimize(loss, np.zeros((d + 1) * c), jac=True, method="L-BFGS-B").x.reshape(d + 1, c)
        self.weight, self.bias = w[:-1].astype(np.float32), w[-1].astype(np.float32)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``(n, n_labels)`` probabilities of each label."""
        z = np.asarray(features, np.float32) @ self.weight + self.bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Label index of each query and the probability of that label."""
        p = self.scores(features)
        index = p.argmax(axis=1)
        return index, p[np.arange(len(index)), index]


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def read_support_csv(path) -> list[tuple[int, int, str]]:
    """Rows ``(train_id, pulse_id, label)`` of a CSV with a ``trainId,pulseId,label`` header."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"support CSV not found: {path}")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"trainId", "pulseId", "label"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise InputDataError(f"{path}: expected a header with columns trainId,pulseId,label, got {reader.fieldnames}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append((int(row["trainId"]), int(row["pulseId"]), row["label"].strip()))
            except (TypeError, ValueError):
                raise InputDataError(f"{path}:{line}: trainId and pulseId must be integers, got {row}") from None
            if not rows[-1][2]:
                raise InputDataError(f"{path}:{line}: empty label")
    if not rows:
        raise InputDataError(f"{path} has no support rows")
    return rows


def frames_for_ids(batches, wanted: list[tuple[int, int, str]], to_grid) -> SupportSet:
    """Collect the frames named in ``wanted`` from an iterator of source batches.

    ``batches`` yields dicts with ``data``, ``valid``, ``train_id``, ``pulse_id`` (as the input
    sources do); ``to_grid(data, valid) -> (patterns, valid)`` maps them onto the model grid.
    """
    index = {(t, p): i for i, (t, p, _) in enumerate(wanted)}
    patterns: list = [None] * len(wanted)
    masks: list = [None] * len(wanted)
    for batch in batches:
        keys = [(int(t), int(p)) for t, p in zip(batch["train_id"], batch["pulse_id"])]
        rows = [j for j, key in enumerate(keys) if key in index]
        if rows:
            grid, grid_valid = to_grid(batch["data"][rows], batch["valid"][rows])
            for j, g, v in zip(rows, grid, grid_valid):
                patterns[index[keys[j]]], masks[index[keys[j]]] = g, v
        if all(p is not None for p in patterns):
            break
    missing = [wanted[i][:2] for i, p in enumerate(patterns) if p is None]
    if missing:
        raise InputDataError(f"{len(missing)} support frames not found in the run, e.g. (trainId, pulseId) = {missing[0]}")
    return SupportSet(np.stack(patterns), np.stack(masks), np.array([w[2] for w in wanted]))


def _labels_from(arrays, path) -> np.ndarray:
    """String labels from ``label(s)``, or from integer ``hit_class`` with ``class_names`` (simulator files)."""
    for key in ("labels", "label"):
        if key in arrays:
            return np.asarray(arrays[key][()])
    if "hit_class" in arrays and "class_names" in arrays:
        names = np.array([n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(arrays["class_names"][()])])
        return names[np.asarray(arrays["hit_class"][()], dtype=int)]
    raise InputDataError(f"{path}: no labels (expected 'labels', or 'hit_class' with 'class_names')")


def read_labelled_dataset(path, to_grid=None) -> SupportSet:
    """A labelled dataset file: ``.npz`` (``patterns``, ``valid`` or ``mask``, labels) or a CXI file.

    Labels are strings in ``labels``, or integer ``hit_class`` with ``class_names`` as the simulator
    writes them; in a CXI file they sit under ``entry_1/sample_1/``. Frames not already on the model
    grid are mapped onto it with ``to_grid(frames, valid)``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"labelled dataset not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            if "patterns" not in f:
                raise InputDataError(f"{path}: a labelled .npz needs an array 'patterns' (and 'valid' or 'mask')")
            frames = f["patterns"].astype(np.float32)
            valid = f["valid"].astype(bool) if "valid" in f else (f["mask"] == 0) if "mask" in f else np.ones(frames.shape, bool)
            labels = _labels_from(f, path)
    else:
        from ..io.cxi import read_cxi

        cxi = read_cxi(path)
        try:
            frames, valid = cxi.read(0, len(cxi))
            labels = _labels_from(cxi.file.get("entry_1/sample_1", {}), path)
        finally:
            cxi.close()
    labels = np.array([lab.decode() if isinstance(lab, bytes) else str(lab) for lab in np.asarray(labels).ravel()])
    if len(labels) != len(frames):
        raise InputDataError(f"{path}: {len(frames)} patterns but {len(labels)} labels")
    valid = np.broadcast_to(valid, frames.shape)
    if to_grid is not None:
        frames, valid = to_grid(frames, valid)
    return SupportSet(frames, np.asarray(valid, bool), labels)
