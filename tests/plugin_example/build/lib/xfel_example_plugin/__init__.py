"""Example third-party stage: veto frames with saturated pixels (e.g. a droplet hitting the beam)."""

import numpy as np

from xfel_dl_plugins import Field, Param, Stage


class SaturationVeto(Stage):
    description = "Counts saturated pixels; keeps frames with fewer than max_saturated"
    kind = "hit_finder"
    params = {
        "level": Param(1000.0, float, "a pixel at or above this value is saturated", unit="photons", min=0.0),
        "max_saturated": Param(10, int, "frames with more saturated pixels are vetoed", min=0),
    }
    inputs = ("data", "valid")
    outputs = (
        Field("n_saturated", "int32", doc="saturated valid pixels"),
        Field("is_clean", "bool", doc="fewer than max_saturated saturated pixels"),
    )
    filter_field = "is_clean"

    def process(self, batch):
        n = len(batch)
        saturated = (batch["data"] >= self.p.level) & batch["valid"]
        count = np.count_nonzero(saturated.reshape(n, -1), axis=1).astype(np.int32)
        return {"n_saturated": count, "is_clean": count < self.p.max_saturated}
