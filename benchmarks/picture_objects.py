"""Held-out phasing test objects the team did not design: pictures bundled with scikit-image.

scikit-image is installed in the PyNX benchmark venv (``benchmarks/setup_pynx.sh``), never in the
package's. Each picture is resized to 1/2.67 of the array side (oversampling 2.67 per dimension) and
placed at the centre; some are cut to a disc or an ellipse, two carry a phase from another picture.
Dense pictures (phantom, camera, text) have near-centrosymmetric supports and a large share of their
power in the central speckle, which the beam stop removes: they are harder than the test objects of
``xfel_dl_plugins.phasing.testobjects``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: name -> (file, crop box (left, top, right, bottom) or None, cut: None | "disc" | "ellipse",
#: phase picture or None, invert)
PICTURES = {
    "horse": ("horse.png", None, None, None, True),
    "phantom": ("phantom.png", None, None, None, False),
    "camera_disc": ("camera.png", (56, 16, 456, 416), "disc", None, False),
    "coins_phase": ("coins.png", (0, 0, 300, 300), "disc", "moon.png", False),
    "astronaut_disc": ("astronaut.png", (100, 0, 400, 300), "disc", None, False),
    "cell_square": ("cell.png", None, None, None, False),
    "text_disc": ("text.png", (0, 0, 170, 170), "disc", None, False),
    "chelsea_phase": ("chelsea.png", (100, 0, 400, 300), "ellipse", "rocket.jpg", False),
}


def skimage_data_dir(bench_dir: Path) -> Path:
    """scikit-image's bundled pictures in the benchmark venv."""
    found = sorted(Path(bench_dir).glob("venv/lib/python3*/site-packages/skimage/data"))
    if not found:
        raise FileNotFoundError(f"no scikit-image data under {bench_dir}/venv: run benchmarks/setup_pynx.sh {bench_dir}")
    return found[0]


def _grey(path: Path, size: int, box=None) -> np.ndarray:
    from PIL import Image  # matplotlib's dependency, in the package venv

    im = Image.open(path).convert("L")
    if box:
        im = im.crop(box)
    return np.asarray(im.resize((size, size), Image.LANCZOS), np.float64) / 255.0


def picture_object(name: str, n: int, data_dir: Path) -> np.ndarray:
    """The complex object ``name`` of :data:`PICTURES` on an n x n array, centred."""
    file, box, cut, phase_file, invert = PICTURES[name]
    s = int(n / 2.67)
    amp = _grey(data_dir / file, s, box)
    if invert:
        amp = 1.0 - amp
    y, x = np.indices((s, s)) - (s - 1) / 2
    if cut == "disc":
        amp = amp * (np.hypot(y, x) <= s / 2)
    elif cut == "ellipse":
        amp = amp * ((y / (s / 2)) ** 2 + (x / (s / 3)) ** 2 <= 1)
    obj = amp.astype(np.complex128)
    if phase_file:
        obj = obj * np.exp(2j * (_grey(data_dir / phase_file, s) - 0.5))
    out = np.zeros((n, n), np.complex128)
    o = (n - s) // 2
    out[o:o + s, o:o + s] = obj
    return out
