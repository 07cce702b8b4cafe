"""Inference with packaged classifier / encoder weights (imports torch when a model is loaded).

Weights are read only through :func:`xfel_dl_plugins.learned_weights.load_weights`. The sidecar
holds ``arch`` (rebuilds the network), ``grid`` (``size``, ``binning`` and the geometry the model was
trained at) and, for the classifier, ``calibration``: the softmax temperature fitted on the validation
split and quantiles of the validation energy score used for the out-of-distribution score.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from ..errors import StageError, WeightsError
from ..learned_weights import LoadedWeights, load_into_torch_module, load_weights
from . import SINGLE
from .inputs import VIEW_COUNTS, average_over_views, network_input, restore_readout_noise, whole_photon_frames


def energy_score(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Energy ``-T logsumexp(logits / T)``: high for frames unlike the training data."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    m = z.max(axis=1)
    return -temperature * (m + np.log(np.exp(z - m[:, None]).sum(axis=1)))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confident_singles(prediction: dict, min_probability: float, max_ood: float) -> np.ndarray:
    """Frames a filter keeps as single hits: class single, calibrated P(single) >= ``min_probability``
    and OOD score <= ``max_ood`` (``prediction`` from :meth:`ClassifierModel.predict`)."""
    return ((prediction["class_index"] == SINGLE) & (prediction["probabilities"][:, SINGLE] >= min_probability)
            & (prediction["ood_score"] <= max_ood))


def torch_device(device: str):
    """A torch device for "cpu" or "cuda", with a clear error when CUDA is asked for but absent."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise StageError("device 'cuda' requested but this torch build has no usable CUDA device")
    return torch.device(device)


class _TorchModel:
    """A network rebuilt from weights, evaluated in batches on one device."""

    expected_type = ""

    def __init__(self, name: str, path=None, device: str = "cpu"):
        import torch

        from .models import build_model

        self.weights: LoadedWeights = load_weights(name, path)
        config = self.weights.config
        arch = config.get("arch")
        if not isinstance(arch, dict) or arch.get("type") != self.expected_type:
            found = arch.get("type") if isinstance(arch, dict) else None
            raise WeightsError(
                f"weights '{name}' ({self.weights.path}) hold a {found!r} model, expected {self.expected_type!r}"
            )
        grid = config.get("grid", {})
        try:
            self.size, self.binning = int(grid["size"]), int(grid["binning"])
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"weights sidecar of '{name}' lacks grid.size / grid.binning") from None
        self.grid = grid
        self.device = torch_device(device)
        self.model = build_model(arch)
        load_into_torch_module(self.model, self.weights)
        # channels-last convolutions: 1.3-1.6x faster on the CPU for these small networks, same results
        # to float rounding (~1e-5 in the logits)
        self.model.to(self.device, memory_format=torch.channels_last).eval()
        #: Build the network input where the network runs: on a GPU the host would otherwise be the
        #: bottleneck (log1p and views of every pixel on one core: ~4,600 instead of ~10^5 frames/s).
        self.inputs_on_device = self.device.type != "cpu"

    def _forward(self, patterns, valid, batch_size: int, views: int = 1) -> np.ndarray:
        """Network outputs in batches, each the mean over ``views`` orientations (:func:`average_over_views`)."""
        import torch

        patterns = np.asarray(patterns)
        if patterns.ndim != 3 or patterns.shape[1:] != (self.size, self.size):
            raise StageError(
                f"model '{self.weights.name}' expects ({self.size}, {self.size}) patterns, got shape {patterns.shape}"
            )

        def forward(x):
            x = torch.from_numpy(x).to(self.device) if isinstance(x, np.ndarray) else x
            return self.model(x).float().cpu().numpy()

        def batch_input(start: int):
            p, v = patterns[start : start + batch_size], valid[start : start + batch_size]
            if self.inputs_on_device:  # ship photons and mask (5 bytes a pixel), build the input there
                p = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32)).to(self.device)
                v = torch.from_numpy(np.ascontiguousarray(v, dtype=bool)).to(self.device)
            return network_input(p, v)

        outputs = []
        with torch.inference_mode(), full_float32_convolutions():
            for start in range(0, len(patterns), batch_size):
                outputs.append(average_over_views(forward, batch_input(start), views))
        if not outputs:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(outputs)


@contextmanager
def full_float32_convolutions():
    """cuDNN convolutions in full float32 instead of TF32 (torch's default on recent GPUs), so that
    the GPU gives the CPU's probabilities to ~1e-6 (TF32 moved them by up to 0.01 on an H100)."""
    import torch

    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def training_readout_noise(config: dict) -> float:
    """Read-out noise (rms photons per detector pixel) of the simulated frames a weights sidecar's
    network was trained on: its training config's, else the simulator's default."""
    from ..simulation.config import DetectorConfig

    training = config.get("training") if isinstance(config.get("training"), dict) else {}
    detector = training.get("config", {}).get("data", {}).get("simulation", {}).get("detector", {})
    return float(detector.get("readout_noise_photons", DetectorConfig.readout_noise_photons))


class ClassifierModel(_TorchModel):
    """The hit classifier with its temperature and OOD calibration.

    ``views`` (1, 2 or 4): logits are averaged over that many views of each pattern
    (:data:`~.inputs.DIHEDRAL_VIEWS`), at that many times the cost; the calibration fitted for that
    number of views is used where the weights carry one.

    Frames holding whole photons (photonised data) get the read-out noise of the training frames back
    before the network (:func:`~.inputs.restore_readout_noise`), since the network reads part of its
    decision from that noise floor."""

    expected_type = "classifier"

    def __init__(self, name: str = "spi_classifier", path=None, device: str = "cpu", views: int = 2):
        super().__init__(name, path, device)
        if views not in VIEW_COUNTS:
            raise StageError(f"views must be one of {VIEW_COUNTS}, got {views!r}")
        self.views = views
        cal = self.weights.config.get("calibration", {})
        cal = (cal.get("by_views") or {}).get(str(views), cal) if isinstance(cal, dict) else cal
        try:
            self.temperature = float(cal["temperature"])
            self.energy_quantiles = np.asarray(cal["energy_quantiles"], dtype=np.float64)
            self.class_names = tuple(self.weights.config["class_names"])
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"weights sidecar of '{name}' lacks calibration.temperature/energy_quantiles or class_names") from None
        if not self.temperature > 0 or self.energy_quantiles.ndim != 1 or len(self.energy_quantiles) < 2:
            raise WeightsError(f"weights sidecar of '{name}' has an invalid calibration")
        self.readout_noise = training_readout_noise(self.weights.config)

    def logits(self, patterns, valid, batch_size: int = 256) -> np.ndarray:
        return self._forward(patterns, valid, batch_size, self.views).reshape(len(patterns), len(self.class_names))

    def predict(self, patterns, valid, batch_size: int = 256, *, binning: int | None = None,
                restore_noise: bool = True) -> dict[str, np.ndarray]:
        """Class index, calibrated probabilities, OOD score (0..1, ~1 = unlike anything seen in training)
        and ``whole_photons`` (frames found photonised).

        ``binning``: detector pixels per model pixel of ``patterns`` (default: the training grid's); the
        read-out noise restored to photonised frames is the training frames' per detector pixel, summed
        over a block. ``restore_noise=False`` gives the network photonised frames as they are."""
        whole = whole_photon_frames(patterns, valid)
        if restore_noise:
            patterns = restore_readout_noise(patterns, whole, self.readout_noise * (binning or self.binning))
        logits = self.logits(patterns, valid, batch_size)
        probabilities = softmax(logits, self.temperature).astype(np.float32)
        energy = energy_score(logits, self.temperature)
        # Fraction of in-distribution validation frames with a lower energy than this frame.
        ood = np.interp(energy, self.energy_quantiles, np.linspace(0.0, 1.0, len(self.energy_quantiles)))
        return {
            "class_index": probabilities.argmax(axis=1).astype(np.int8),
            "probabilities": probabilities,
            "ood_score": ood.astype(np.float32),
            "whole_photons": whole,
        }


class EncoderModel(_TorchModel):
    """The embedding encoder: unit vectors, compared by cosine similarity."""

    expected_type = "embedding"

    def __init__(self, name: str = "spi_encoder", path=None, device: str = "cpu"):
        super().__init__(name, path, device)

    def embed(self, patterns, valid, batch_size: int = 256) -> np.ndarray:
        dim = int(self.weights.config["arch"]["embedding_dim"])
        return self._forward(patterns, valid, batch_size).reshape(len(patterns), dim)
