"""A short report of a results file: figures a person looks at, and a few numbers.

Hit finding (any chain with a lit-pixel hit finder, optionally a sphere size fit; compared with the
ground truth of a simulated run when it is given) and phase retrieval (reconstructions, PRTF curves and
resolutions of a ``phase_retriever`` stage), each where the file has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

HIT_CLASSES = ("blank", "single", "multiple", "other")
HIT_FIGURE, PHASING_FIGURE = "report.png", "phasing.png"  # written beside report.md


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
    """Write ``report.md`` into ``out_dir`` with its figures (``report.png``: hit finding,
    ``phasing.png``: phase retrieval, each where the file has such results); return its path."""
    import extra_data
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    results = extra_data.H5File(str(results_path))
    hit_src = find_source(results, "data.is_hit")
    phasing_src = find_source(results, "data.prtf")
    if hit_src is None and phasing_src is None:
        raise ValueError(f"{results_path} has neither hit-finder (data.is_hit) nor phasing (data.prtf) results")
    lines = [f"# Report: {results_path.name}", ""]
    if hit_src is not None:
        lines += _hit_finding_section(results, hit_src, out_dir, run_dir, truth, geometry, n_examples, plt)
    if phasing_src is not None:
        lines += _phasing_section(results, phasing_src, out_dir, plt)
    warnings = run_warnings(results)
    if warnings:
        lines += ["## Warnings", ""] + [f"- {source.rsplit('/', 1)[-1].lower()}: {line}" for source, line in warnings] + [""]
    md = out_dir / "report.md"
    md.write_text("\n".join(lines))
    return md


def run_warnings(results) -> list[tuple[str, str]]:
    """(source, line) of every stage warning kept in a results file (``Stage.warnings``)."""
    import json

    found = []
    for source in sorted(results.control_sources):
        values = results.get_run_values(source)
        if "warnings.value" in values:
            found += [(source, line) for line in json.loads(values["warnings.value"])]
    return found


def print_report(report: Path) -> None:
    """Print a report's text (without its image links) and where its figures are."""
    text = report.read_text()
    print("\n".join(line for line in text.splitlines() if not line.startswith("![")).strip())
    figures = [str(report.parent / name) for name in (HIT_FIGURE, PHASING_FIGURE) if f"]({name})" in text]
    print(f"\nreport: {report}  (figures: {', '.join(figures)})")


def _hit_finding_section(results, hit_src: str, out_dir: Path, run_dir, truth, geometry, n_examples, plt) -> list[str]:
    """``report.png`` (hit rate, lit pixels, sizes, example frames) and the section's lines."""
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
    png = out_dir / HIT_FIGURE
    fig.savefig(png, dpi=80)
    plt.close(fig)

    n, n_hits = len(lit), int(hits.fields["is_hit"].sum())
    lines = ["## Hit finding", "",
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
    return lines


#: Per-frame scalars of a phase_retriever source read for the phasing report.
PHASING_SCALARS = ("llk", "llk_free", "resolution_px", "resolution_nm")


def _phasing_section(results, src: str, out_dir: Path, plt, n_examples: int = 6) -> list[str]:
    """``phasing.png`` (the best-resolved reconstructions, PRTF curves, resolutions) and the section's lines."""
    sd = results[src]
    fields = list(PHASING_SCALARS) + ["prtf"] + [f for f in ("starts_averaged", "starts_agreeing", "positivity")
                                                 if f"data.{f}" in sd.keys()]
    rows = read_stage(results, src, fields)
    res_px, res_nm = rows.fields["resolution_px"], rows.fields["resolution_nm"]
    phased = np.isfinite(rows.fields["llk"])
    resolved = np.flatnonzero(np.isfinite(res_px))
    in_nm = bool(np.isfinite(res_nm[resolved]).all()) and len(resolved) > 0
    resolution, unit = (res_nm, "nm") if in_nm else (res_px, "px")
    examples = resolved[np.argsort(resolution[resolved], kind="stable")][:n_examples]

    n_cols = max(len(examples), 3)
    fig, axes = plt.subplots(3, n_cols, figsize=(3.2 * n_cols, 9.6), squeeze=False)
    images = _read_frames(sd, rows, examples, ("amplitude", "phase", "support"))
    for col, (i, (amplitude, phase, support)) in enumerate(zip(examples, images)):
        box = _support_box(support)
        axes[0, col].imshow(amplitude[box], cmap="gray", origin="lower")
        axes[0, col].set_title(f"train {rows.train_id[i]} pulse {rows.pulse_id[i]}\n"
                               f"res {resolution[i]:.1f} {unit}" +
                               (f", {_starts_label(rows.fields, i)}" if "starts_averaged" in rows.fields else ""),
                               fontsize=9)
        axes[1, col].imshow(np.where(support[box] > 0, phase[box], np.nan), cmap="twilight", vmin=-np.pi,
                            vmax=np.pi, origin="lower")
        axes[1, col].set_title("phase (in the support)", fontsize=9)
    for ax in axes[:2].ravel():
        ax.axis("off")

    ax = axes[2, 0]
    prtf = rows.fields["prtf"][resolved]
    freq = np.arange(prtf.shape[1]) / prtf.shape[1]  # shell k: k / size cycles per pixel
    for curve in prtf[:200]:
        ax.plot(freq, curve, color="0.7", lw=0.5)
    shells = np.isfinite(prtf).any(axis=0)  # shells beyond the corners or without data are NaN
    if shells.any():
        ax.plot(freq[shells], np.nanmedian(prtf[:, shells], axis=0), "k-", lw=2, label="median")
        ax.legend()
    ax.axhline(1 / np.e, color="r", ls="--", lw=1)
    ax.set(xlabel="spatial frequency (cycles/px)\nhalf period = 1 / (2 f)", ylabel="PRTF", xlim=(0, 0.5),
           ylim=(0, 1.05), title="PRTF per frame (1/e in red)")
    ax = axes[2, 1]
    if len(resolved):
        ax.hist(resolution[resolved], bins=30)
    ax.set(xlabel=f"resolution ({unit})\nhalf period at PRTF = 1/e", ylabel="frames", title="Resolution")
    ax = axes[2, 2]
    ax.hist(rows.fields["llk_free"][phased], bins=30)
    ax.set(xlabel="free LLK (held-out pixels)\n~1 at the noise floor", ylabel="frames", title="Fit to held-out pixels")
    for ax in axes[2, 3:]:
        ax.axis("off")
    fig.tight_layout()
    png = out_dir / PHASING_FIGURE
    fig.savefig(png, dpi=80)
    plt.close(fig)

    lines = ["## Phase retrieval", "", f"- frames phased: {int(phased.sum())} of {len(phased)}; with a resolution: "
             f"{len(resolved)}" + (f", median {np.median(resolution[resolved]):.1f} {unit}" if len(resolved) else "")]
    # Files from before starts_agreeing: the averaged starts (the same where the recipe has no GUIDE)
    agreeing = next((rows.fields[f] for f in ("starts_agreeing", "starts_averaged") if f in rows.fields), None)
    if agreeing is not None:
        alone = int((agreeing[phased] == 1).sum())
        lines.append(f"- reproduced by 2 or more independent starts: {int(phased.sum()) - alone}; by a single start "
                     f"(no other reproduced it, or n_keep = 1): {alone}")
    if "positivity" in rows.fields:  # files from before positivity = "auto" have no such field
        lines.append(f"- phased as real, non-negative densities: {int(rows.fields['positivity'][phased].sum())}; as "
                     f"complex objects: {int((rows.fields['positivity'][phased] == 0).sum())}")
    lines += [f"- examples: the {len(examples)} best-resolved frames", "", f"![phasing]({png.name})", ""]
    return lines


def _read_frames(sd, rows: StageRows, indices, names) -> list[tuple[np.ndarray, ...]]:
    """Per-frame arrays ``names`` of the frames ``indices`` of a source, reading each of their trains once."""
    import extra_data

    trains = sorted({int(rows.train_id[i]) for i in indices})
    part = sd.select_trains(extra_data.by_id[trains])
    keys = list(zip(part["data.pulseId"].train_id_coordinates().tolist(), part["data.pulseId"].ndarray().tolist()))
    arrays = {name: part[f"data.{name}"].ndarray() for name in names}
    row = {key: k for k, key in enumerate(keys)}
    return [tuple(arrays[name][row[(int(rows.train_id[i]), int(rows.pulse_id[i]))]] for name in names)
            for i in indices]


def _starts_label(fields: dict, i: int) -> str:
    """How many starts frame ``i``'s image averages and, where written, how many other independent
    starts reproduced the selected one."""
    n = int(fields["starts_averaged"][i])
    label = "1 start" if n == 1 else f"{n} starts averaged"
    if "starts_agreeing" not in fields:
        return label
    others = int(fields["starts_agreeing"][i]) - 1
    return f"{label}, reproduced by {others if others > 0 else 'none'}"


def _support_box(support: np.ndarray, margin: int = 4):
    """Slices around the support (the whole array if it is empty)."""
    ys, xs = np.nonzero(support)
    if len(ys) == 0:
        return np.s_[:, :]
    return np.s_[max(ys.min() - margin, 0) : ys.max() + margin + 1, max(xs.min() - margin, 0) : xs.max() + margin + 1]


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
