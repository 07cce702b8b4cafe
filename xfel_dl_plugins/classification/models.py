"""Small mask-aware CNNs on the two-channel input of :mod:`.inputs` (imports torch).

``build_model(arch)`` makes either the classifier (logits over :data:`CLASS_NAMES`) or the
embedding encoder (L2-normalised vectors for few-shot classification) from the architecture dict
stored in the weights sidecar, so a weights file always rebuilds the network it was trained with.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import WeightsError


class Backbone(nn.Module):
    """3x3 conv-BN-ReLU layers given as ``[[channels, stride], ...]``, then global mean+max pooling.

    Strided convolutions (rather than pooling) keep the cost low at full resolution; global pooling
    makes the features independent of where a speckle sits, and mean and max together see both
    extended ring patterns (single particles) and isolated bright features.
    """

    def __init__(self, in_channels: int, layers: list, fused: bool = False):
        super().__init__()
        modules: list[nn.Module] = []
        c_in = in_channels
        for c_out, stride in layers:
            conv = nn.Conv2d(c_in, int(c_out), 3, stride=int(stride), padding=1, bias=fused)
            # Trained with BatchNorm; shipped "fused": the normalisation folded into the convolution.
            modules += [conv, nn.ReLU(inplace=True)] if fused else [conv, nn.BatchNorm2d(int(c_out)), nn.ReLU(inplace=True)]
            c_in = int(c_out)
        self.features = nn.Sequential(*modules)
        self.out_dim = 2 * c_in

    def forward(self, x):
        h = self.features(x)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)


class RingProfile(nn.Module):
    """Masked azimuthal mean and spread of the log-intensity channel in 1-pixel rings around the beam.

    The physics cue for single particles, given to the head directly: a single compact particle
    gives deep minima in the radial profile (the sphere-like form factor) and little spread around
    each ring; several particles of different sizes fill the minima in; needles, streaks and
    interference fringes spread the intensity around the rings. Invalid pixels do not count.
    """

    def __init__(self, size: int, n_rings: int):
        super().__init__()
        yy, xx = np.indices((size, size)) - size // 2
        ring = np.rint(np.hypot(yy, xx)).astype(int).ravel()
        onehot = np.zeros((size * size, n_rings), np.float32)
        inside = ring < n_rings
        onehot[np.flatnonzero(inside), ring[inside]] = 1.0
        self.register_buffer("rings", torch.from_numpy(onehot), persistent=False)
        self.out_dim = 2 * n_rings

    def forward(self, x):
        signal, valid = x[:, 0].flatten(1), x[:, 1].flatten(1)
        count = valid @ self.rings
        norm = 1.0 / count.clamp(min=1.0)
        mean = (signal @ self.rings) * norm
        var = (signal * signal @ self.rings) * norm - mean * mean
        std = torch.sqrt(var.clamp(min=0.0) + 1e-6) * (count > 0)
        return torch.cat([mean, std], dim=1)


class _Features(nn.Module):
    """Backbone features, plus the ring profile when the architecture asks for it."""

    def __init__(self, in_channels: int, layers: list, fused: bool, input_size: int, rings: int):
        super().__init__()
        self.backbone = Backbone(in_channels, layers, fused)
        self.rings = RingProfile(input_size, rings) if rings else None
        self.out_dim = self.backbone.out_dim + (self.rings.out_dim if self.rings is not None else 0)

    def forward(self, x):
        h = self.backbone(x)
        return h if self.rings is None else torch.cat([h, self.rings(x)], dim=1)


class HitClassifier(nn.Module):
    """Logits over the hit classes."""

    def __init__(self, in_channels: int, layers: list, hidden: int, n_classes: int, dropout: float = 0.2,
                 fused: bool = False, input_size: int = 64, rings: int = 0):
        super().__init__()
        self.features = _Features(in_channels, layers, fused, input_size, rings)
        self.head = nn.Sequential(
            nn.Linear(self.features.out_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )

    def forward(self, x):
        return self.head(self.features(x))


class EmbeddingEncoder(nn.Module):
    """Unit-length embedding vectors (cosine similarity = dot product)."""

    def __init__(self, in_channels: int, layers: list, hidden: int, embedding_dim: int, fused: bool = False,
                 input_size: int = 64, rings: int = 0):
        super().__init__()
        self.features = _Features(in_channels, layers, fused, input_size, rings)
        self.head = nn.Sequential(
            nn.Linear(self.features.out_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, embedding_dim)
        )

    def forward(self, x):
        return F.normalize(self.head(self.features(x)), dim=1)


def build_model(arch: dict) -> nn.Module:
    """The network described by ``arch`` (the ``arch`` entry of a weights sidecar)."""
    try:
        kind = arch["type"]
        common = dict(in_channels=int(arch["in_channels"]), layers=[(int(c), int(s)) for c, s in arch["layers"]], hidden=int(arch["hidden"]),
                      fused=bool(arch.get("fused", False)), input_size=int(arch.get("input_size", 64)),
                      rings=int(arch.get("rings", 0)))
        if kind == "classifier":
            return HitClassifier(**common, n_classes=int(arch["n_classes"]), dropout=float(arch.get("dropout", 0.2)))
        if kind == "embedding":
            return EmbeddingEncoder(**common, embedding_dim=int(arch["embedding_dim"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"invalid architecture description {arch!r}: {type(exc).__name__}: {exc}") from None
    raise WeightsError(f"unknown architecture type {kind!r} (expected 'classifier' or 'embedding')")


def fused_state(module: nn.Module) -> dict:
    """NumPy state of ``module`` with every BatchNorm folded into the preceding convolution.

    The result loads into the same architecture built with ``fused=True`` (conv with bias, no
    BatchNorm), which computes the same function in inference mode with fewer operations.
    """
    state: dict = {}
    for name, child in module.named_modules():
        if isinstance(child, Backbone):
            layers = list(child.features)
            fused_index = 0
            for i, layer in enumerate(layers):
                if isinstance(layer, nn.Conv2d):
                    weight = layer.weight.detach().double()
                    bias = torch.zeros(weight.shape[0], dtype=torch.float64)
                    if layer.bias is not None:
                        bias = layer.bias.detach().double()
                    if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
                        bn = layers[i + 1]
                        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
                        weight = weight * scale[:, None, None, None]
                        bias = (bias - bn.running_mean.double()) * scale + bn.bias.detach().double()
                    prefix = f"{name}.features.{2 * fused_index}"
                    state[f"{prefix}.weight"] = weight.float().numpy()
                    state[f"{prefix}.bias"] = bias.float().numpy()
                    fused_index += 1
    backbones = [n for n, m in module.named_modules() if isinstance(m, Backbone)]
    for key, value in module.state_dict().items():
        if not any(key.startswith(b + ".") for b in backbones):
            state[key] = value.detach().cpu().contiguous().numpy()
    return state
