"""Learned single-hit classifiers: a calibrated CNN and a few-shot embedding classifier.

Both read the assembled frames (``image``/``image_valid``) and bin them themselves around the
beam centre onto the grid their weights were trained on (``bin_to_grid``): the network needs a fixed
input size and a fixed reciprocal-space sampling, which a chain-wide ``reciprocal_grid`` stage does
not guarantee. With ``binning = 0`` (default) the binning is chosen from the run's geometry so that
one binned pixel spans the same scattering angle per wavelength as in training
(``binning * pixel_size / (distance * wavelength)`` matched to the nearest integer), so a model
trained at one photon energy and distance applies at another.

torch is imported only in :meth:`setup` (through :mod:`xfel_dl_plugins.classification.runtime`).
"""

from __future__ import annotations

import numpy as np

from ..classification import CLASS_NAMES
from ..classification.fewshot import FEWSHOT_RULES
from ..classification.inputs import frames_to_grid
from ..classification.runtime import confident_singles
from ..errors import StageError
from ..io.geometry import wavelength_m
from .base import Field, FrameBatch, Param, Stage


def _spatial_frequency_per_pixel(pixel_size_m: float, distance_m: float, photon_energy_eV: float) -> float:
    """Reciprocal-space step of one pixel in 1/m (small-angle): ``pixel / (distance * wavelength)``."""
    return pixel_size_m / (distance_m * wavelength_m(photon_energy_eV))


def matched_binning(trained_grid: dict, geometry) -> int:
    """Integer binning of ``geometry``'s pixels closest to the training grid's reciprocal sampling."""
    try:
        target = trained_grid["binning"] * _spatial_frequency_per_pixel(
            trained_grid["pixel_size_m"], trained_grid["distance_m"], trained_grid["photon_energy_eV"]
        )
    except KeyError:
        return int(trained_grid["binning"])
    here = _spatial_frequency_per_pixel(geometry.pixel_size_m, geometry.distance_m, geometry.photon_energy_eV)
    return max(1, int(round(target / here)))


#: Parameters both learned classifiers take, beside their own.
_MODEL_GRID_PARAMS = {
    "binning": Param(0, int, "detector pixels per model pixel; 0 = match the training sampling from the geometry", min=0, max=64),
    "batch_size": Param(512, int, "frames per network call", min=1),
}


class _GridClassifier(Stage):
    """Shared plumbing: geometry checks, the binning, and mapping frames onto the model grid."""

    kind = "classifier"
    inputs = ("image", "image_valid")
    filter_field = "is_single"
    devices = ("cpu", "cuda")

    def _setup_grid(self, model) -> None:
        geometry = self.context.geometry
        if geometry is None:
            raise StageError(f"{type(self).__name__} needs the detector geometry (beam centre, pixel size, distance)")
        self.size = model.size
        self.binning = self.p.binning or matched_binning(model.grid, geometry)
        self.centre = geometry.beam_centre

    def to_grid(self, images, valid):
        images = np.asarray(images)
        if images.shape[-2:] == (self.size, self.size) and self.binning == 1:
            return images.astype(np.float32), np.asarray(valid, bool)
        return frames_to_grid(images, valid, self.centre, self.size, self.binning)

    def _grid_key(self) -> str:
        return f"_model_grid:{self.size}:{self.binning}:{tuple(float(c) for c in self.centre)}"

    def _grid_of(self, batch: FrameBatch):
        """The batch's frames on the model grid, binned once per batch for all classifier stages of a chain."""
        key = self._grid_key()
        if key + ":patterns" not in batch.fields:
            patterns, valid = self.to_grid(batch["image"], batch["image_valid"])
            batch.fields[key + ":patterns"], batch.fields[key + ":valid"] = patterns, valid
        return batch.fields[key + ":patterns"], batch.fields[key + ":valid"]

    def _probabilities_key(self, model) -> str:
        """Where a batch keeps the calibrated probabilities of ``model`` on this grid (computed once per chain)."""
        return f"_cnn_probabilities:{model.weights.sha256}:{model.views}:{self._grid_key()}"

    def provenance(self) -> dict[str, str]:
        """Which weights ran: recorded in the results file's provenance."""
        weights = self.model.weights
        return {"weights": weights.name, "weights_sha256": weights.sha256, "weights_file": str(weights.path)}


class CNNClassifier(_GridClassifier):
    description = (
        "CNN single-hit classifier (blank/single/multiple/other) with temperature-calibrated "
        "probabilities and an out-of-distribution score; filter keeps confident in-distribution singles"
    )
    params = {
        "weights": Param("spi_classifier", str, "name of the packaged weights (xfel_dl_plugins/weights/NAME.safetensors)"),
        "weights_path": Param("", str, "path of a .safetensors file (with .json sidecar) used instead of the packaged weights"),
        "min_probability": Param(0.5, float, "is_single needs a calibrated single probability at least this", min=0.0, max=1.0),
        "max_ood": Param(0.999, float, "is_single needs an OOD score at most this (1 = no OOD cut)", min=0.0, max=1.0),
        "views": Param(2, int, "orientations of each frame whose logits are averaged (cost x views)", choices=(1, 2, 4)),
        **_MODEL_GRID_PARAMS,
    }
    outputs = (
        Field("hit_class", "int8", doc="0 blank, 1 single, 2 multiple, 3 other"),
        Field("class_probabilities", "float32", (len(CLASS_NAMES),), doc="calibrated P(blank, single, multiple, other)"),
        Field("p_single", "float32", doc="calibrated probability of a single hit"),
        Field("ood_score", "float32", doc="fraction of validation frames more typical than this one (near 1 = unlike training data)"),
        Field("is_single", "bool", doc="single hit with p_single >= min_probability and ood_score <= max_ood"),
    )

    def setup(self) -> None:
        from ..classification.runtime import ClassifierModel

        self.model = ClassifierModel(self.p.weights, self.p.weights_path or None, device=self.context.device,
                                     views=self.p.views)
        self._setup_grid(self.model)
        self.counts = np.zeros(len(CLASS_NAMES), dtype=np.int64)
        self.n_single = 0
        self.n_whole_photons = 0  # photonised frames, given the training frames' read-out noise back

    def process(self, batch: FrameBatch) -> dict:
        patterns, valid = self._grid_of(batch)
        result = self.model.predict(patterns, valid, batch_size=self.p.batch_size, binning=self.binning)
        batch.fields[self._probabilities_key(self.model)] = result["probabilities"]  # for a few-shot stage after it
        p_single = result["probabilities"][:, CLASS_NAMES.index("single")]
        is_single = confident_singles(result, self.p.min_probability, self.p.max_ood)
        self.counts += np.bincount(result["class_index"], minlength=len(CLASS_NAMES))
        self.n_single += int(is_single.sum())
        self.n_whole_photons += int(result["whole_photons"].sum())
        return {
            "hit_class": result["class_index"],
            "class_probabilities": result["probabilities"],
            "p_single": p_single.astype(np.float32),
            "ood_score": result["ood_score"],
            "is_single": is_single,
        }

    def finish(self) -> dict:
        return {
            **{f"n_{name}": int(c) for name, c in zip(CLASS_NAMES, self.counts)},
            "n_kept_single": self.n_single,
            "n_whole_photon_frames": self.n_whole_photons,  # photonised: read-out noise restored (docs/classification.md, "Input")
            "binning": int(self.binning),
            "weights_sha256": self.model.weights.sha256,
        }


class FewShotClassifier(_GridClassifier):
    description = (
        "few-shot classifier: labels frames from a small labelled support set of the new sample (CSV of "
        "trainId,pulseId,label from a run, or a labelled .npz/CXI file) with a linear head fitted on the "
        "support's embeddings and CNN probabilities, or by nearest neighbours; no network retrained"
    )
    params = {
        "support": Param("", str, "labelled dataset (.npz/.cxi/.h5) or CSV with columns trainId,pulseId,label"),
        "support_run": Param("", str, "run directory or CXI file holding the frames a CSV support refers to"),
        "weights": Param("spi_encoder", str, "name of the packaged encoder weights"),
        "weights_path": Param("", str, "path of a .safetensors encoder file used instead of the packaged one"),
        "rule": Param("linear", str, "linear: softmax regression fitted on the support's features; knn: majority "
                      "of the k most similar support frames; prototype: nearest class mean", choices=FEWSHOT_RULES),
        "k": Param(3, int, "support frames voting with rule = knn", min=1),
        "classifier_weights": Param("spi_classifier", str, "packaged CNN classifier whose calibrated log-probabilities "
                                    "join the embeddings as features of the linear rule ('' = embeddings alone)"),
        "classifier_weights_path": Param("", str, "path of a .safetensors classifier file used instead"),
        "single_label": Param("single", str, "support label whose frames is_single keeps"),
        **_MODEL_GRID_PARAMS,
    }
    outputs = (
        Field("label_index", "int16", doc="index into the sorted support labels (listed in the run results as 'labels')"),
        Field("similarity", "float32", doc="cosine similarity to the chosen label's prototype (low: unlike its support frames)"),
        Field("is_single", "bool", doc="assigned label == single_label"),
    )

    def setup(self) -> None:
        from ..classification.fewshot import LinearProbeClassifier, PrototypeClassifier
        from ..classification.runtime import EncoderModel

        if not self.p.support:
            raise StageError("fewshot_classifier needs parameter 'support' (a labelled dataset file or a CSV)")
        self.model = EncoderModel(self.p.weights, self.p.weights_path or None, device=self.context.device)
        self._setup_grid(self.model)
        self.cnn = self._load_cnn() if self.p.rule == "linear" else None
        support = self._read_support()
        embeddings = self.model.embed(support.patterns, support.valid, batch_size=self.p.batch_size)
        # the class prototypes give every rule its 'similarity' output; knn and prototype also label with them
        self.prototypes = PrototypeClassifier(embeddings, support.labels, k=self.p.k if self.p.rule == "knn" else 0)
        if self.p.rule == "linear":
            features = self._features(support.patterns, support.valid, embeddings)
            self.classifier = LinearProbeClassifier(features, support.labels)
        else:
            self.classifier = self.prototypes
        names = list(self.classifier.label_names)
        if self.p.single_label not in names:
            raise StageError(f"single_label {self.p.single_label!r} is not among the support labels {names}")
        self.single_index = names.index(self.p.single_label)
        self.counts = np.zeros(len(names), dtype=np.int64)

    def _load_cnn(self):
        """The CNN whose probabilities join the embeddings (None without one); it must share the encoder's grid."""
        from ..classification.runtime import ClassifierModel

        if not (self.p.classifier_weights or self.p.classifier_weights_path):
            return None
        cnn = ClassifierModel(self.p.classifier_weights or "spi_classifier", self.p.classifier_weights_path or None,
                              device=self.context.device)
        if cnn.grid != self.model.grid:
            raise StageError(f"classifier weights {cnn.weights.name} were trained on grid {cnn.grid}, the encoder on "
                             f"{self.model.grid}: give matching weights, or classifier_weights = '' for embeddings alone")
        return cnn

    def _features(self, patterns, valid, embeddings, batch: FrameBatch | None = None):
        """Features of the linear rule; a batch reuses the probabilities of an earlier ``cnn_classifier``
        stage that ran the same weights with the same views on the same grid."""
        from ..classification.fewshot import support_features

        if self.cnn is None:
            return support_features(embeddings)
        key = self._probabilities_key(self.cnn)
        if batch is not None and key in batch.fields:
            return support_features(embeddings, batch.fields[key])
        probabilities = self.cnn.predict(patterns, valid, batch_size=self.p.batch_size, binning=self.binning)["probabilities"]
        if batch is not None:
            batch.fields[key] = probabilities
        return support_features(embeddings, probabilities)

    def _read_support(self):
        from ..classification.fewshot import frames_for_ids, read_labelled_dataset, read_support_csv

        if not self.p.support.lower().endswith(".csv"):
            return read_labelled_dataset(self.p.support, to_grid=self.to_grid)
        if not self.p.support_run:
            raise StageError("a CSV support set needs 'support_run': the run directory or CXI file its frames come from")
        wanted = read_support_csv(self.p.support)
        source = _open_source(self.p.support_run)
        geometry = self.context.geometry
        try:
            return frames_for_ids(
                source.batches(64), wanted, lambda data, valid: self.to_grid(*geometry.assemble(data, valid))
            )
        finally:
            source.close()

    def process(self, batch: FrameBatch) -> dict:
        patterns, valid = self._grid_of(batch)
        embeddings = self.model.embed(patterns, valid, batch_size=self.p.batch_size)
        queries = self._features(patterns, valid, embeddings, batch) if self.p.rule == "linear" else embeddings
        index = self.classifier.predict(queries)[0]
        similarity = self.prototypes.similarity(embeddings, index)
        self.counts += np.bincount(index, minlength=len(self.counts))
        return {
            "label_index": index.astype(np.int16),
            "similarity": similarity.astype(np.float32),
            "is_single": index == self.single_index,
        }

    def finish(self) -> dict:
        return {
            "labels": ",".join(self.classifier.label_names),
            **{f"n_{name}": int(c) for name, c in zip(self.classifier.label_names, self.counts)},
            "binning": int(self.binning),
            "weights_sha256": self.model.weights.sha256,
            "rule": self.p.rule,
        }

    def provenance(self) -> dict[str, str]:
        record = super().provenance()
        if self.cnn is not None:
            record.update(classifier_weights=self.cnn.weights.name, classifier_weights_sha256=self.cnn.weights.sha256)
        return record


def _open_source(path: str):
    """An input source (run directory or CXI file) for reading support frames."""
    from ..io.sources import CXISource, RunSource

    if path.lower().endswith(".cxi"):
        return CXISource(path)
    return RunSource(path)
