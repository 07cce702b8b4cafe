import subprocess
import sys

import numpy as np
import pytest

from xfel_dl_plugins.errors import StageError
from xfel_dl_plugins.stages.base import Field, FrameBatch, Param, Stage
from xfel_dl_plugins.stages.registry import describe_stage, load_stage, stage_entry_points

BUILTIN = {"litpixel_hitfinder", "sphere_sizer", "reciprocal_grid", "phase_retriever", "cnn_classifier",
           "fewshot_classifier"}


class Doubler(Stage):
    kind = "preprocessing"
    params = {"factor": Param(2.0, float, "multiplier", min=0.0), "mode": Param("a", str, "m", choices=("a", "b"))}
    inputs = ("data",)
    outputs = (Field("doubled", "float32", ("n",)),)


def test_params_defaults_types_and_ranges():
    assert Doubler().p.factor == 2.0
    assert Doubler(factor=3).p.factor == 3.0  # int accepted for float
    with pytest.raises(StageError, match="unknown parameter 'fctor'"):
        Doubler(fctor=1.0)
    with pytest.raises(StageError, match="'factor' must be a number"):
        Doubler(factor="big")
    with pytest.raises(StageError, match="'factor' must be >= 0.0"):
        Doubler(factor=-1.0)
    with pytest.raises(StageError, match="'mode' must be one of"):
        Doubler(mode="c")
    with pytest.raises(StageError, match="must be a boolean|must be a number"):
        Doubler(factor=True)


def test_batch_subset_and_missing_field():
    batch = FrameBatch({"train_id": np.arange(4), "data": np.ones((4, 2, 2))})
    sub = batch.subset(np.array([True, False, True, False]))
    assert len(sub) == 2 and sub["data"].shape == (2, 2, 2)
    with pytest.raises(StageError, match="no per-frame field 'pattern'"):
        batch["pattern"]
    with pytest.raises(StageError, match="no detector geometry"):
        batch["image"]


def test_registry_lists_every_builtin_stage():
    assert BUILTIN <= set(stage_entry_points())
    for name in ("litpixel_hitfinder", "sphere_sizer", "reciprocal_grid"):
        cls = load_stage(name)
        assert issubclass(cls, Stage)
        assert f"[{cls.kind}]" in describe_stage(name)
    with pytest.raises(StageError, match="unknown stage 'nope'"):
        load_stage("nope")


def test_listing_stages_does_not_import_torch_or_cupy():
    code = ("import sys; from xfel_dl_plugins.cli import main; rc = main(['stages']); "
            "heavy = [m for m in ('torch', 'cupy', 'extra_data', 'scipy.fft', 'h5py') if m in sys.modules]; "
            "print('HEAVY', heavy); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "HEAVY []" in proc.stdout
    for name in BUILTIN:
        assert name in proc.stdout
    assert "filter:  keeps frames where 'is_hit'" in proc.stdout
