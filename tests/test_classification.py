"""Classifier and few-shot stages: contract, weights handling, training determinism, few-shot plumbing."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from _synthetic_frames import synthetic_frames
from xfel_dl_plugins.classification import CLASS_NAMES
from xfel_dl_plugins.errors import InputDataError, StageError, WeightsError
from xfel_dl_plugins.stages.base import FrameBatch, StageContext
from xfel_dl_plugins.stages.classification import CNNClassifier, FewShotClassifier, matched_binning

torch = pytest.importorskip("torch")

GRID = {"size": 64, "binning": 4, "pixel_size_m": 200e-6, "distance_m": 0.705, "photon_energy_eV": 6000.0}
LAYERS = [[8, 2], [16, 2], [16, 2]]
RINGS = 8


def _save(tmp_path, arch, extra, name):
    from xfel_dl_plugins.classification.models import build_model, fused_state
    from xfel_dl_plugins.learned_weights import save_weights

    torch.manual_seed(0)
    path = Path(tmp_path) / f"{name}.safetensors"
    arch = {**arch, "fused": True}
    save_weights(path, fused_state(build_model(arch | {"fused": False})), {"arch": arch, "grid": GRID, "class_names": list(CLASS_NAMES), **extra})
    return path


@pytest.fixture
def classifier_weights(tmp_path):
    arch = {"type": "classifier", "in_channels": 2, "layers": LAYERS, "hidden": 8, "n_classes": 4, "input_size": 64, "rings": RINGS}
    cal = {"calibration": {"temperature": 1.5, "energy_quantiles": list(np.linspace(-3, 0, 11))}}
    return _save(tmp_path, arch, cal, "clf")


@pytest.fixture
def encoder_weights(tmp_path):
    arch = {"type": "embedding", "in_channels": 2, "layers": LAYERS, "hidden": 8, "embedding_dim": 8, "input_size": 64, "rings": RINGS}
    return _save(tmp_path, arch, {}, "enc")


def _geometry():
    # A flat 64x64 detector of 4x4-binned AGIPD pixels (0.8 mm): matched binning is 1.
    return SimpleNamespace(beam_centre=(32.0, 32.0), pixel_size_m=0.8e-3, distance_m=0.705, photon_energy_eV=6000.0)


def _batch(n=12, seed=0):
    patterns, valid, labels = synthetic_frames(n, seed)
    ids = np.arange(n, dtype=np.uint64)
    fields = {"image": patterns, "image_valid": valid, "train_id": 1000 + ids // 4, "pulse_id": ids % 4,
              "cell_id": ids.astype(np.uint16)}
    return FrameBatch(fields), labels


def test_stage_module_does_not_import_torch():
    code = "import sys, xfel_dl_plugins.stages.classification; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_matched_binning_follows_geometry():
    agipd = SimpleNamespace(pixel_size_m=200e-6, distance_m=0.705, photon_energy_eV=6000.0)
    assert matched_binning(GRID, agipd) == 4
    # Twice the distance: each pixel spans half the angle, so twice the binning.
    assert matched_binning(GRID, SimpleNamespace(pixel_size_m=200e-6, distance_m=1.41, photon_energy_eV=6000.0)) == 8
    assert matched_binning(GRID, SimpleNamespace(pixel_size_m=75e-6, distance_m=0.705, photon_energy_eV=12000.0)) == 5


def test_cnn_stage_outputs_and_filter(classifier_weights):
    stage = CNNClassifier(StageContext(geometry=_geometry()), weights_path=str(classifier_weights), min_probability=0.0)
    stage.setup()
    assert stage.binning == 1 and stage.size == 64
    batch, _ = _batch()
    out = stage.process(batch)
    assert set(out) == {f.name for f in CNNClassifier.outputs}
    shapes = stage.output_shapes()
    for name, value in out.items():
        assert value.shape == (len(batch),) + shapes[name], name
    np.testing.assert_allclose(out["class_probabilities"].sum(1), 1.0, rtol=1e-5)
    assert np.all((out["ood_score"] >= 0) & (out["ood_score"] <= 1))
    np.testing.assert_array_equal(out["is_single"], out["hit_class"] == CLASS_NAMES.index("single"))
    summary = stage.finish()
    assert sum(summary[f"n_{c}"] for c in CLASS_NAMES) == len(batch)


def test_cnn_stage_counts_frames_rounded_to_whole_photons(classifier_weights):
    """Photonised frames are counted in the summary, and the network sees them with read-out noise restored."""
    from xfel_dl_plugins.classification.inputs import whole_photon_frames

    batch, _ = _batch(8)
    noisy = batch["image"] + np.random.default_rng(0).normal(0, 0.2, batch["image"].shape).astype(np.float32)
    rounded = np.rint(np.clip(noisy, 0, None))
    assert not whole_photon_frames(noisy, batch["image_valid"]).any()
    assert whole_photon_frames(rounded, batch["image_valid"]).all()
    stage = CNNClassifier(StageContext(geometry=_geometry()), weights_path=str(classifier_weights))
    stage.setup()
    outputs = [stage.process(FrameBatch({**batch.fields, "image": images})) for images in (noisy, rounded)]
    assert stage.finish()["n_whole_photon_frames"] == len(rounded)
    bare = stage.model.predict(rounded, batch["image_valid"], restore_noise=False)
    assert not np.allclose(outputs[1]["class_probabilities"], bare["probabilities"])


def test_whole_photon_frames_on_the_model_grid():
    """Binned photonised frames are still found (blocks cut by gaps are scaled, so not every value is whole)."""
    from xfel_dl_plugins.classification.inputs import frames_to_grid, whole_photon_frames

    rng = np.random.default_rng(1)
    photons = rng.poisson(0.5, (6, 256, 256)).astype(np.float32)
    valid = np.ones(photons.shape, bool)
    valid[:, 126:130, :] = False  # a gap
    valid[:, 5::9, 3::7] = False  # dead pixels: their 2 x 2 blocks are scaled by 4/3
    noisy = photons + rng.normal(0, 0.15, photons.shape).astype(np.float32)
    grid_photons, grid_valid = frames_to_grid(photons, valid, (128.0, 128.0), 128, 2)
    grid_noisy, _ = frames_to_grid(noisy, valid, (128.0, 128.0), 128, 2)
    assert not np.all(grid_photons[grid_valid] == np.rint(grid_photons[grid_valid]))  # the scaled blocks
    assert whole_photon_frames(grid_photons, grid_valid).all()
    assert not whole_photon_frames(grid_noisy, grid_valid).any()


def test_restored_readout_noise_depends_only_on_the_frame():
    """Noise of the requested rms on the chosen frames only, the same for a frame in any batch."""
    from xfel_dl_plugins.classification.inputs import restore_readout_noise

    rng = np.random.default_rng(2)
    patterns = rng.poisson(1.0, (5, 64, 64)).astype(np.float32)
    chosen = np.array([True, False, True, True, False])
    out = restore_readout_noise(patterns, chosen, 0.3)
    np.testing.assert_array_equal(out[~chosen], patterns[~chosen])
    added = (out - patterns)[chosen]
    assert abs(added.std() - 0.3) < 0.01 and abs(added.mean()) < 0.01
    assert not np.array_equal(added[0], added[1])  # frames differ, so does their noise
    reordered = restore_readout_noise(patterns[::-1], chosen[::-1], 0.3)[::-1]
    np.testing.assert_array_equal(reordered, out)
    assert restore_readout_noise(patterns, np.zeros(5, bool), 0.3) is patterns


def test_view_averaged_logits(classifier_weights):
    """views=4 averages the logits of the pattern, its 90-degree rotation, mirror and transpose."""
    from xfel_dl_plugins.classification.runtime import ClassifierModel

    patterns, valid, _ = synthetic_frames(6, 1)
    one = ClassifierModel(path=classifier_weights, views=1)
    four = ClassifierModel(path=classifier_weights, views=4)
    views = [patterns, np.rot90(patterns, 1, (1, 2)), patterns[:, ::-1], np.swapaxes(patterns, 1, 2)]
    masks = [valid, np.rot90(valid, 1, (1, 2)), valid[:, ::-1], np.swapaxes(valid, 1, 2)]
    expected = np.mean([one.logits(np.ascontiguousarray(p), np.ascontiguousarray(v)) for p, v in zip(views, masks)], 0)
    np.testing.assert_allclose(four.logits(patterns, valid), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(StageError, match="views"):
        CNNClassifier(StageContext(geometry=_geometry()), weights_path=str(classifier_weights), views=3)


def test_calibration_per_view_count(tmp_path):
    """Weights calibrated per number of averaged views: the model uses the matching temperature."""
    from xfel_dl_plugins.classification.runtime import ClassifierModel

    arch = {"type": "classifier", "in_channels": 2, "layers": LAYERS, "hidden": 8, "n_classes": 4, "input_size": 64, "rings": RINGS}
    one = {"temperature": 1.5, "energy_quantiles": list(np.linspace(-3, 0, 11))}
    four = {"temperature": 0.9, "energy_quantiles": list(np.linspace(-2, 0, 11))}
    path = _save(tmp_path, arch, {"calibration": {**one, "by_views": {"1": one, "4": four}}}, "clf_views")
    assert ClassifierModel(path=path, views=4).temperature == 0.9
    assert ClassifierModel(path=path, views=1).temperature == 1.5
    assert ClassifierModel(path=path, views=2).temperature == 1.5  # none for 2 views: the single-view one


def test_stage_without_geometry_is_a_clear_error(classifier_weights):
    stage = CNNClassifier(StageContext(), weights_path=str(classifier_weights))
    with pytest.raises(StageError, match="geometry"):
        stage.setup()


def test_corrupted_weights_are_rejected(classifier_weights):
    from xfel_dl_plugins.classification.runtime import ClassifierModel

    data = bytearray(classifier_weights.read_bytes())
    data[-5] ^= 0xFF
    classifier_weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupted"):
        ClassifierModel(path=classifier_weights)


def test_mismatched_weights_are_rejected(classifier_weights):
    from xfel_dl_plugins.classification.runtime import ClassifierModel
    from xfel_dl_plugins.learned_weights import load_weights, save_weights

    loaded = load_weights("clf", classifier_weights)
    config = dict(loaded.config)
    config["arch"] = {**config["arch"], "layers": [[8, 2], [16, 2], [32, 2]]}  # sidecar claims another network
    save_weights(classifier_weights, loaded.tensors, config)
    with pytest.raises(WeightsError, match="shape"):
        ClassifierModel(path=classifier_weights)


def test_encoder_weights_are_not_a_classifier(encoder_weights):
    from xfel_dl_plugins.classification.runtime import ClassifierModel

    with pytest.raises(WeightsError, match="expected 'classifier'"):
        ClassifierModel(path=encoder_weights)


def test_no_pickle_in_weights(classifier_weights):
    head = classifier_weights.read_bytes()[:8]
    header_len = int.from_bytes(head, "little")
    json.loads(classifier_weights.read_bytes()[8 : 8 + header_len])  # safetensors: a JSON header, raw tensors


def test_prototype_classifier_and_knn():
    from xfel_dl_plugins.classification.fewshot import PrototypeClassifier

    rng = np.random.default_rng(1)
    centres = np.eye(3, 16)
    labels = np.repeat(["a", "b", "c"], 10)
    support = centres[np.repeat(np.arange(3), 10)] + 0.2 * rng.normal(size=(30, 16))
    queries = centres[[2, 0, 1]] + 0.2 * rng.normal(size=(3, 16))
    for k in (0, 5):
        clf = PrototypeClassifier(support, labels, k=k)
        index, sim = clf.predict(queries)
        assert list(clf.label_names[index]) == ["c", "a", "b"]
        assert np.all(sim > 0.5)
    with pytest.raises(InputDataError, match="at least 2 labels"):
        PrototypeClassifier(support[:5], ["a"] * 5)


def test_support_csv_and_frames_for_ids(tmp_path):
    from xfel_dl_plugins.classification.fewshot import frames_for_ids, read_support_csv

    csv = tmp_path / "support.csv"
    csv.write_text("trainId,pulseId,label\n1001,2,single\n1000,0,blank\n")
    wanted = read_support_csv(csv)
    assert wanted == [(1001, 2, "single"), (1000, 0, "blank")]
    batch, _ = _batch(8)
    source = [{k: batch.fields[k] for k in ("train_id", "pulse_id")} | {"data": batch["image"], "valid": batch["image_valid"]}]
    support = frames_for_ids(source, wanted, lambda d, v: (d, v))
    np.testing.assert_array_equal(support.patterns[0], batch["image"][6])
    assert list(support.labels) == ["single", "blank"]
    bad = tmp_path / "bad.csv"
    bad.write_text("train,pulse,label\n1,2,x\n")
    with pytest.raises(InputDataError, match="trainId,pulseId,label"):
        read_support_csv(bad)
    with pytest.raises(InputDataError, match="not found in the run"):
        frames_for_ids(source, [(5, 5, "x")], lambda d, v: (d, v))


@pytest.mark.parametrize("rule", ["linear", "knn", "prototype"])
def test_fewshot_stage_from_labelled_npz(tmp_path, encoder_weights, classifier_weights, rule):
    patterns, valid, labels = synthetic_frames(16, 3)
    npz = tmp_path / "support.npz"
    np.savez(npz, patterns=patterns, valid=valid, labels=np.array(CLASS_NAMES)[labels])
    stage = FewShotClassifier(StageContext(geometry=_geometry()), support=str(npz), weights_path=str(encoder_weights),
                              classifier_weights_path=str(classifier_weights), rule=rule)
    stage.setup()
    assert (stage.cnn is not None) == (rule == "linear")
    batch, _ = _batch(10)
    out = stage.process(batch)
    assert out["label_index"].shape == (10,) and out["similarity"].dtype == np.float32
    assert np.all(out["label_index"] < len(stage.classifier.label_names))
    assert stage.finish()["labels"] == ",".join(sorted(set(np.array(CLASS_NAMES)[labels])))
    if rule == "linear":
        assert stage.provenance()["classifier_weights_sha256"] == stage.cnn.weights.sha256
    with pytest.raises(StageError, match="single_label"):
        FewShotClassifier(StageContext(geometry=_geometry()), support=str(npz), weights_path=str(encoder_weights),
                          classifier_weights="", single_label="singles").setup()


def test_fewshot_stage_refuses_a_classifier_on_another_grid(tmp_path, encoder_weights):
    patterns, valid, labels = synthetic_frames(8, 3)
    npz = tmp_path / "support.npz"
    np.savez(npz, patterns=patterns, valid=valid, labels=np.array(CLASS_NAMES)[labels])
    stage = FewShotClassifier(StageContext(geometry=_geometry()), support=str(npz), weights_path=str(encoder_weights))
    with pytest.raises(StageError, match="grid"):  # the packaged 128 x 128 classifier beside a 64 x 64 encoder
        stage.setup()


def test_linear_probe_learns_the_support_labels():
    from xfel_dl_plugins.classification.fewshot import LinearProbeClassifier, support_features

    rng = np.random.default_rng(2)
    centres = np.eye(3, 16)
    labels = np.repeat(["a", "b", "c"], 10)
    embeddings = centres[np.repeat(np.arange(3), 10)] + 0.3 * rng.normal(size=(30, 16))
    # uniform CNN probabilities: the labels must be learnt from the embeddings
    probabilities = np.full((30, 4), 0.25)
    features = support_features(embeddings, probabilities)
    assert features.shape == (30, 20) and np.allclose(np.linalg.norm(features[:, :16], axis=1), 1)
    clf = LinearProbeClassifier(features, labels)
    queries = support_features(centres[[2, 0, 1]] + 0.3 * rng.normal(size=(3, 16)), np.full((3, 4), 0.25))
    index, p = clf.predict(queries)
    assert list(clf.label_names[index]) == ["c", "a", "b"] and np.all(p > 1 / 3)
    again = LinearProbeClassifier(features, labels)  # deterministic
    assert np.array_equal(again.weight, clf.weight)
    with pytest.raises(InputDataError, match="at least 2 labels"):
        LinearProbeClassifier(features[:5], ["a"] * 5)
    with pytest.raises(InputDataError, match="finite"):
        LinearProbeClassifier(np.full((4, 3), np.nan), ["a", "a", "b", "b"])


def test_fewshot_stage_needs_support(encoder_weights):
    with pytest.raises(StageError, match="support"):
        FewShotClassifier(StageContext(geometry=_geometry()), weights_path=str(encoder_weights)).setup()


def test_augmenter_keeps_shapes_and_masks_invalid_pixels():
    from xfel_dl_plugins.classification.data import AugmentConfig, Augmenter

    patterns, valid, _ = synthetic_frames(6, 2)
    aug = Augmenter(AugmentConfig(p_missing_panel=1.0, p_missing_quadrant=1.0), np.random.default_rng(0))
    p, v = aug(patterns, valid)
    assert p.shape == patterns.shape and v.dtype == bool
    assert np.all(p[~v] == 0)
    assert np.all(v.sum((1, 2)) < valid.sum((1, 2)))  # at least a quadrant went missing in every frame


def test_photonize_rounds_some_frames_to_whole_photons():
    from xfel_dl_plugins.classification.data import AugmentConfig, Augmenter

    patterns, valid, _ = synthetic_frames(40, 3)
    config = AugmentConfig(p_missing_panel=0, p_missing_quadrant=0, max_patches=0, max_read_noise=0.3, p_photonize=0.5)
    p, v = Augmenter(config, np.random.default_rng(1))(patterns, valid)
    whole = np.array([np.all(frame == np.rint(frame)) and frame.min() >= 0 for frame in p])
    assert 5 < whole.sum() < 35  # about half the frames, the others keep their read-out noise


def test_straight_shadows_are_rays_from_the_beam_or_lines_across():
    from xfel_dl_plugins.classification.data import straight_shadow

    ray = straight_shadow(64, np.deg2rad(35.0), 3.0)
    assert 100 < ray.sum() < 130  # ~3 px wide, ~39 px from the beam to the edge (32 / cos 35 deg)
    assert not ray[:31, :31].any()  # nothing behind the beam
    assert ray[32 + 10, 32 + 14] and not ray[32 - 10, 32 - 14]  # along the ray (y = x tan 35 deg), not behind the beam
    wire = straight_shadow(64, 0.0, 3.0, wire=True, offset=5.0)
    assert wire[36:39].all() and wire.sum() == 3 * 64  # a 3-px horizontal line centred 5 px from the beam


def test_extra_mask_augmentation_hides_part_of_some_frames():
    from xfel_dl_plugins.classification.data import AugmentConfig, Augmenter, random_masks

    patterns, valid, _ = synthetic_frames(16, 4)
    off = dict(p_missing_panel=0, p_missing_quadrant=0, max_patches=0, max_beamstop_px=0, max_shift_px=0, rotate=False,
               p_thinning=0, max_background=0, max_read_noise=0)
    _, v = Augmenter(AugmentConfig(**off, p_extra_mask=0.5), np.random.default_rng(2))(patterns, valid)
    _, v0 = Augmenter(AugmentConfig(**off), np.random.default_rng(2))(patterns, valid)
    np.testing.assert_array_equal(v0, valid)
    lost = (valid & ~v).sum((1, 2))
    assert 3 <= np.sum(lost > 0) <= 13  # about half the frames
    assert np.all(lost < 0.9 * valid[0].size)
    rng = np.random.default_rng(3)
    assert all(0 < random_masks(64, rng).sum() < 64 * 64 for _ in range(20))


def test_batchnorm_folding_preserves_the_network():
    from xfel_dl_plugins.classification.inputs import network_input
    from xfel_dl_plugins.classification.models import build_model, fused_state

    arch = {"type": "embedding", "in_channels": 2, "layers": LAYERS, "hidden": 8, "embedding_dim": 8, "input_size": 64, "rings": RINGS}
    torch.manual_seed(1)
    trained = build_model(arch)
    for module in trained.modules():  # non-trivial running statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
    fused = build_model({**arch, "fused": True})
    fused.load_state_dict({k: torch.from_numpy(v) for k, v in fused_state(trained).items()})
    patterns, valid, _ = synthetic_frames(4, 5)
    x = torch.from_numpy(network_input(patterns, valid))
    with torch.inference_mode():
        np.testing.assert_allclose(fused.eval()(x).numpy(), trained.eval()(x).numpy(), atol=1e-5)


def test_labelled_cxi_as_written_by_the_simulator(tmp_path):
    from xfel_dl_plugins.classification.fewshot import read_labelled_dataset
    from xfel_dl_plugins.io.cxi import write_cxi

    patterns, valid, labels = synthetic_frames(6, 4)
    path = write_cxi(tmp_path / "s.cxi", patterns, mask=(~valid[0]).astype(np.uint8), distance_m=0.705,
                     pixel_size_m=0.8e-3, photon_energy_eV=6000.0,
                     extra={"hit_class": labels.astype(np.int8), "class_names": np.array([c.encode() for c in CLASS_NAMES])})
    support = read_labelled_dataset(path)
    assert list(support.labels) == [CLASS_NAMES[i] for i in labels]
    np.testing.assert_array_equal(support.valid[0], valid[0])
    empty = tmp_path / "e.npz"
    np.savez(empty, patterns=patterns)
    with pytest.raises(InputDataError, match="no labels"):
        read_labelled_dataset(empty)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch)")
def test_classifier_on_cuda_matches_cpu(classifier_weights):
    from xfel_dl_plugins.classification.runtime import ClassifierModel

    patterns, valid, _ = synthetic_frames(8, 6)
    cpu = ClassifierModel(path=classifier_weights).predict(patterns, valid)
    gpu = ClassifierModel(path=classifier_weights, device="cuda").predict(patterns, valid)
    np.testing.assert_allclose(gpu["probabilities"], cpu["probabilities"], atol=1e-4)


def test_network_input_built_from_tensors_equals_the_numpy_one(classifier_weights):
    """The GPU path builds the network input and its views from torch tensors on the device: the same
    values as from NumPy arrays (checked here on the CPU), including NaN, negative and masked pixels."""
    from xfel_dl_plugins.classification.inputs import average_over_views, network_input
    from xfel_dl_plugins.classification.runtime import ClassifierModel

    patterns, valid, _ = synthetic_frames(6, 7)
    patterns[0, 5, 5], patterns[1, 7, 9], valid[2, :3] = np.nan, -4.0, False
    reference = network_input(patterns, valid)
    from_tensors = network_input(torch.from_numpy(patterns), torch.from_numpy(valid))
    np.testing.assert_allclose(from_tensors.numpy(), reference, rtol=1e-6)  # log1p may differ in the last bit
    for views in (1, 2, 4):
        got = average_over_views(lambda x: x.numpy(), from_tensors, views)
        np.testing.assert_allclose(got, average_over_views(lambda x: x, reference, views), rtol=1e-6)
    model = ClassifierModel(path=classifier_weights)
    expected = model.predict(patterns, valid)["probabilities"]
    model.inputs_on_device = True  # the GPU's route, taken on the CPU
    np.testing.assert_allclose(model.predict(patterns, valid)["probabilities"], expected, atol=1e-5)


def test_cuda_requested_without_cuda_is_a_clear_error(classifier_weights):
    from xfel_dl_plugins.classification.runtime import ClassifierModel

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(StageError, match="cuda"):
        ClassifierModel(path=classifier_weights, device="cuda")


def test_fewshot_after_the_cnn_stage_reuses_its_frames_and_probabilities(tmp_path, encoder_weights, classifier_weights):
    """In a chain cnn_classifier -> fewshot_classifier the frames are binned once and the CNN runs once per frame,
    and the few-shot labels are those the few-shot stage gives alone."""
    patterns, valid, labels = synthetic_frames(16, 3)
    npz = tmp_path / "support.npz"
    np.savez(npz, patterns=patterns, valid=valid, labels=np.array(CLASS_NAMES)[labels])
    context = StageContext(geometry=_geometry())
    cnn = CNNClassifier(context, weights_path=str(classifier_weights))
    fewshot = FewShotClassifier(context, support=str(npz), weights_path=str(encoder_weights),
                                classifier_weights_path=str(classifier_weights))
    cnn.setup()
    fewshot.setup()
    alone = fewshot.process(_batch(10)[0])

    batch = _batch(10)[0]
    batch.fields.update(cnn.process(batch))
    fewshot.cnn.predict = lambda *a, **k: pytest.fail("the CNN ran a second time")
    fewshot.to_grid = lambda *a: pytest.fail("the frames were binned a second time")
    chained = fewshot.process(batch)
    for name in alone:
        np.testing.assert_array_equal(chained[name], alone[name])
    # Another number of views is another result: not reused.
    cnn4 = CNNClassifier(context, weights_path=str(classifier_weights), views=4)
    cnn4.setup()
    assert cnn4._probabilities_key(cnn4.model) != fewshot._probabilities_key(fewshot.cnn)
    with pytest.raises(StageError, match=r"have: \['cell_id'"):
        batch["no_such_field"]
