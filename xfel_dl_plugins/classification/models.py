"""Small mask-aware CNNs on the two-channel input of :mod:`.inputs` (imports torch).

``build_model(arch)`` makes either the classifier (logits over :data:`CLASS_NAMES`) or the
embedding encoder (L2-normalised vectors for few-shot classification) from the architecture dict
stored in the weights sidecar, so a weights file always rebuilds the network it was trained with.
"""

from __future__ import annotations

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

    def __init__(self, in_channels: int, layers: list):
        super().__init__()
        modules: list[nn.Module] = []
        c_in = in_channels
        for c_out, stride in layers:
            modules += [nn.Conv2d(c_in, int(c_out), 3, stride=int(stride), padding=1, bias=False),
                        nn.BatchNorm2d(int(c_out)), nn.ReLU(inplace=True)]
            c_in = int(c_out)
        self.features = nn.Sequential(*modules)
        self.out_dim = 2 * c_in

    def forward(self, x):
        h = self.features(x)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)


class HitClassifier(nn.Module):
    """Logits over the hit classes."""

    def __init__(self, in_channels: int, layers: list, hidden: int, n_classes: int, dropout: float = 0.2):
        super().__init__()
        self.backbone = Backbone(in_channels, layers)
        self.head = nn.Sequential(
            nn.Linear(self.backbone.out_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )

    def forward(self, x):
        return self.head(self.backbone(x))


class EmbeddingEncoder(nn.Module):
    """Unit-length embedding vectors (cosine similarity = dot product)."""

    def __init__(self, in_channels: int, layers: list, hidden: int, embedding_dim: int):
        super().__init__()
        self.backbone = Backbone(in_channels, layers)
        self.head = nn.Sequential(
            nn.Linear(self.backbone.out_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, embedding_dim)
        )

    def forward(self, x):
        return F.normalize(self.head(self.backbone(x)), dim=1)


def build_model(arch: dict) -> nn.Module:
    """The network described by ``arch`` (the ``arch`` entry of a weights sidecar)."""
    try:
        kind = arch["type"]
        common = dict(in_channels=int(arch["in_channels"]), layers=[(int(c), int(s)) for c, s in arch["layers"]], hidden=int(arch["hidden"]))
        if kind == "classifier":
            return HitClassifier(**common, n_classes=int(arch["n_classes"]), dropout=float(arch.get("dropout", 0.2)))
        if kind == "embedding":
            return EmbeddingEncoder(**common, embedding_dim=int(arch["embedding_dim"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"invalid architecture description {arch!r}: {type(exc).__name__}: {exc}") from None
    raise WeightsError(f"unknown architecture type {kind!r} (expected 'classifier' or 'embedding')")


def state_to_numpy(module: nn.Module) -> dict:
    """The module's parameters and buffers as contiguous NumPy arrays, for ``save_weights``."""
    return {k: v.detach().cpu().contiguous().numpy() for k, v in module.state_dict().items()}
