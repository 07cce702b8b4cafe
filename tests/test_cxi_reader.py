"""CXI input: the layouts phasing users bring (a stack of patterns, or a single 2D pattern)."""

import h5py
import numpy as np

from xfel_dl_plugins.io.cxi import read_cxi, write_cxi
from xfel_dl_plugins.io.sources import CXISource


def test_single_2d_pattern_is_one_frame(tmp_path):
    pattern = np.arange(64, dtype=np.float64).reshape(8, 8)
    pattern[0, 0] = np.nan
    mask = np.zeros((8, 8), np.uint8)
    mask[3:5, 3:5] = 1  # beam stop, nonzero = bad
    path = tmp_path / "one.cxi"
    with h5py.File(path, "w") as fh:
        fh["entry_1/instrument_1/detector_1/data"] = pattern
        fh["entry_1/instrument_1/detector_1/mask"] = mask
    data = read_cxi(path)
    try:
        assert len(data) == 1 and data.frame_shape == (8, 8)
        frames, valid = data.read(0, 1)
        assert frames.shape == valid.shape == (1, 8, 8) and frames.dtype == np.float32
        assert not valid[0, 0, 0] and not valid[0, 3:5, 3:5].any() and valid.sum() == 64 - 1 - 4
        assert frames[0, 7, 7] == 63
    finally:
        data.close()


def test_stack_reads_in_slices_with_per_frame_masks(tmp_path):
    patterns = np.random.default_rng(0).poisson(5.0, (5, 6, 7)).astype(np.float32)
    mask = np.zeros((5, 6, 7), np.uint32)
    mask[2, 1, 1] = 1
    path = write_cxi(tmp_path / "s.cxi", patterns, mask=mask, distance_m=0.7, pixel_size_m=2e-4, photon_energy_eV=6000)
    source = CXISource(path)
    try:
        assert source.info.frame_shape == (6, 7) and source.info.n_frames == 5
        batches = list(source.batches(2))
        assert [len(b["data"]) for b in batches] == [2, 2, 1]
        np.testing.assert_array_equal(np.concatenate([b["data"] for b in batches]), patterns)
        valid = np.concatenate([b["valid"] for b in batches])
        assert not valid[2, 1, 1] and valid.sum() == 5 * 42 - 1
    finally:
        source.close()
