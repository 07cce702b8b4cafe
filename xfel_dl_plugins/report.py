"""A short report of a hit-finding results file: figures a person looks at, and a few numbers.

Works on any results file of a chain with a lit-pixel hit finder (and optionally a sphere size fit);
when the ground truth of a simulated run is given, hits and sizes are compared with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

HIT_CLASSES = ("blank", "single", "multiple", "other")


@dataclass
class Truth:
    """Per-frame ground truth of a simulated run, keyed by (train_id, pulse_id)."""

    hit_class: dict[tuple[int, int], int]
    radius_nm: dict[tuple[int, int], float]


@dataclass
class StageRows:
    train_id: np.ndarray
    pulse_id: np.ndarray
    fields: dict[str, np.ndarray]

    def keys(self):
        return list(zip(self.train_id.tolist(), self.pulse_id.tolist()))


def read_stage(results, source: str, fields) -> StageRows:
    sd = results[source]
    first = sd[f"data.{fields[0]}"]
    return StageRows(first.train_id_coordinates(), sd["data.pulseId"].ndarray(),
                     {f: sd[f"data.{f}"].ndarray() for f in fields})


def find_source(results, key: str) -> str | None:
    """The results source written by the stage that produces ``key`` (e.g. ``data.is_hit``)."""
    for src in sorted(results.instrument_sources):
        if "/XFELDL/" in src and key in results[src].keys():
            return src
    return None


def _hit_scores(truth: Truth | None, hits: StageRows) -> dict[str, float]:
    if truth is None:
        return {}
    actual = np.array([truth.hit_class.get(k, 0) > 0 for k in hits.keys()])
    found = hits.fields["is_hit"].astype(bool)
    tp, fp, fn = int((found & actual).sum()), int((found & ~actual).sum()), int((~found & actual).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"true hits": int(actual.sum()), "precision": precision, "recall": recall, "F1": f1}


def make_report(results_path: Path, out_dir: Path, *, run_dir: Path | None = None, truth: Truth | None = None,
                geometry=None, n_examples: int = 4) -> Path:
    """Write ``report.png`` and ``report.md`` into ``out_dir``; return the markdown path."""
    import extra_data
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = extra_data.H5File(str(results_path))
    hit_src = find_source(results, "data.is_hit")
    if hit_src is None:
        raise ValueError(f"{results_path} has no hit-finder results (no data.is_hit)")
    hits = read_stage(results, hit_src, ["lit_pixels", "threshold", "is_hit"])
    size_src = find_source(results, "data.radius_nm")
    sizes = read_stage(results, size_src, ["radius_nm", "fit_quality"]) if size_src else None

    fig, axes = plt.subplots(2, 2 + (n_examples + 1) // 2, figsize=(5 * (2 + (n_examples + 1) // 2), 9))
    ax = axes[0, 0]
    trains = np.unique(hits.train_id)
    rate = np.array([hits.fields["is_hit"][hits.train_id == t].mean() for t in trains])
    ax.plot(trains - trains[0], 100 * rate, "o-", label="found")
    if truth is not None:
        true_rate = [np.mean([truth.hit_class.get(k, 0) > 0 for k in hits.keys() if k[0] == t]) for t in trains]
        ax.plot(trains - trains[0], 100 * np.array(true_rate), "k--", label="true")
        ax.legend()
    ax.set(xlabel=f"train - {trains[0]}", ylabel="hit rate (%)", title="Hit rate per train")

    ax = axes[0, 1]
    lit = hits.fields["lit_pixels"]
    bins = np.linspace(lit.min(), lit.max() + 1, 60)
    if truth is not None:
        cls = np.array([truth.hit_class.get(k, 0) for k in hits.keys()])
        for c, name in enumerate(HIT_CLASSES):
            if np.any(cls == c):
                ax.hist(lit[cls == c], bins=bins, alpha=0.6, label=name)
        ax.legend()
    else:
        ax.hist(lit, bins=bins)
    ax.axvline(np.median(hits.fields["threshold"]), color="r", label="threshold (median)")
    ax.set(xlabel="lit pixels per frame", ylabel="frames", yscale="log", title="Lit-pixel distribution")

    ax = axes[1, 0]
    if sizes is not None and len(sizes.train_id):
        good = sizes.fields["fit_quality"] > 0.5
        radii = sizes.fields["radius_nm"]
        rbins = np.linspace(0, max(radii.max(), 1) * 1.1, 40)
        ax.hist(radii[good], bins=rbins, alpha=0.7, label="fitted (quality > 0.5)")
        if truth is not None:
            tr = np.array([truth.radius_nm.get(k, 0.0) for k in sizes.keys()])
            single = np.array([truth.hit_class.get(k, 0) == 1 for k in sizes.keys()])
            ax.hist(tr[single], bins=rbins, histtype="step", color="k", label="true radius (singles)")
        ax.legend()
    ax.set(xlabel="sphere radius (nm)", ylabel="frames", title="Size distribution of hits")

    ax = axes[1, 1]
    ax.scatter(np.arange(len(lit)), lit, s=4, c=hits.fields["is_hit"], cmap="coolwarm")
    ax.plot(np.arange(len(lit)), hits.fields["threshold"], "k-", lw=1)
    ax.set(xlabel="frame", ylabel="lit pixels", title="Score and adaptive threshold")

    example_axes = axes[:, 2:].ravel()
    shown = _plot_examples(example_axes, run_dir, hits, geometry, n_examples, truth)
    for ax in example_axes[shown:]:
        ax.axis("off")
    fig.tight_layout()
    png = out_dir / "report.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)

    n, n_hits = len(lit), int(hits.fields["is_hit"].sum())
    lines = [f"# Hit-finding report: {results_path.name}", "",
             f"- frames: {n} in {len(trains)} trains; hits: {n_hits} ({100 * n_hits / max(n, 1):.1f} %)"]
    for key, value in _hit_scores(truth, hits).items():
        lines.append(f"- {key} (against the simulation's truth): {value:.3f}" if isinstance(value, float)
                     else f"- {key}: {value}")
    if sizes is not None and len(sizes.train_id) and truth is not None:
        tr = np.array([truth.radius_nm.get(k, 0.0) for k in sizes.keys()])
        single = np.array([truth.hit_class.get(k, 0) == 1 for k in sizes.keys()]) & (tr > 0)
        if single.any():
            err = np.abs(sizes.fields["radius_nm"][single] / tr[single] - 1)
            lines.append(f"- size fit on true single hits: median |error| {100 * np.median(err):.1f} % "
                         f"({single.sum()} frames)")
    lines += ["", f"![report]({png.name})", ""]
    md = out_dir / "report.md"
    md.write_text("\n".join(lines))
    return md


def _plot_examples(axes, run_dir, hits: StageRows, geometry, n_examples: int, truth) -> int:
    """Assembled images of the strongest hits, read back from the run (log scale)."""
    if run_dir is None or geometry is None:
        return 0
    import extra_data
    from extra_data.components import AGIPD1M

    order = np.argsort(-hits.fields["lit_pixels"] * hits.fields["is_hit"])[:n_examples]
    run = extra_data.RunDirectory(str(run_dir))
    shown = 0
    for ax, i in zip(axes, order):
        if not hits.fields["is_hit"][i]:
            break
        tid, pid = int(hits.train_id[i]), int(hits.pulse_id[i])
        det = AGIPD1M(run.select_trains(extra_data.by_id[[tid]]), raw=False, min_modules=1)
        kd = det["image.data"]
        frame = np.flatnonzero(kd.pulse_id_coordinates() == pid)[:1]
        data = kd.ndarray(module_gaps=True, fill_value=np.nan)[:, frame].swapaxes(0, 1)
        image, valid = geometry.assemble(data, np.isfinite(data))
        cy, cx = (int(round(c)) for c in geometry.beam_centre)
        half = 200  # the region with the speckles
        crop = np.s_[max(cy - half, 0) : cy + half, max(cx - half, 0) : cx + half]
        shown_img = np.where(valid[0][crop], np.log10(np.clip(image[0][crop], 0, None) + 1), np.nan)
        ax.imshow(shown_img, cmap="magma", origin="lower", vmin=0, vmax=np.nanpercentile(shown_img, 99.9))
        label = HIT_CLASSES[truth.hit_class.get((tid, pid), 0)] if truth is not None else ""
        ax.set_title(f"train {tid} pulse {pid} {label}".strip(), fontsize=9)
        ax.axis("off")
        shown += 1
    return shown
