import numpy as np
import pytest
from conftest import validate_exdf

from xfel_dl_plugins.io.exdf import ExdfWriter


def test_written_file_opens_in_extra_data_and_validates(tmp_path):
    import extra_data

    path = tmp_path / "out.h5"
    tids = np.arange(100, 110)
    with ExdfWriter(path, tids, proposal=1234, run=5) as w:
        for t in tids:  # variable rows per train, some trains empty
            n = int(t % 3)
            w.append_instrument("DET/XFELDL/A:output", {"data.score": np.full(n, t, np.float32),
                                                        "data.pulseId": np.arange(n, dtype=np.uint64)}, np.full(n, t))
        w.write_run_values("XFELDL/PROVENANCE", {"manifest": "x = 1", "version": "1"})
    assert not (tmp_path / "out.h5.part").exists()
    run = extra_data.H5File(str(path))
    kd = run["DET/XFELDL/A:output", "data.score"]
    assert list(kd.data_counts(labelled=False)) == [int(t % 3) for t in tids]
    assert np.all(kd.ndarray() == kd.train_id_coordinates())
    assert run.get_run_value("XFELDL/PROVENANCE", "manifest") == "x = 1"
    assert run.run_metadata()["proposalNumber"] == 1234
    proc = validate_exdf(path)
    assert proc.returncode == 0 and "No problems found" in proc.stdout, proc.stdout + proc.stderr


def test_failure_leaves_no_file(tmp_path):
    path = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with ExdfWriter(path, [1, 2, 3]) as w:
            w.append_instrument("A/B/C:output", {"data.x": np.ones(2)}, [1, 2])
            raise RuntimeError("stage crashed")
    assert list(tmp_path.iterdir()) == []


def test_rows_out_of_train_order_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not in train order"):
        with ExdfWriter(tmp_path / "o.h5", [1, 2, 3]) as w:
            w.append_instrument("A/B/C:output", {"data.x": np.ones(2)}, [2, 1])
    assert list(tmp_path.iterdir()) == []
