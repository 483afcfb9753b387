"""Pictures people would rather look at than read: overlay montages and bar charts (matplotlib).

``overlay_montage`` draws three orthogonal slices (axial, coronal, sagittal through the centre of
the segmented structures) of an image with one colored contour per task: solid for the
prediction, dashed for the reference when one is given. Slices are taken in RAS display
orientation whatever the file's orientation, with the physical aspect ratio.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

__all__ = ["bar_chart", "overlay_montage"]


def _ras_array(image: sitk.Image) -> tuple[np.ndarray, tuple]:
    """Array indexed [i, j, k] with i toward the patient's left, j posterior, k superior (LPS),
    so slices show in radiological convention (patient's left on the image's right)."""
    oriented = sitk.DICOMOrient(image, "LPS")
    arr = sitk.GetArrayFromImage(oriented).transpose(2, 1, 0)
    return arr, oriented.GetSpacing()


def overlay_montage(image: sitk.Image, masks: dict[str, sitk.Image], colors: dict[str, tuple],
                    out: str | Path, title: str = "", reference: Optional[dict[str, sitk.Image]] = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img, spacing = _ras_array(image)
    # window on the object, not on the air around it (CT: -1000 HU background)
    body = img[img > np.percentile(img, 25)]
    lo, hi = np.percentile(body if body.size else img, [1, 99.5])
    pred = {t: _ras_array(m)[0] > 0 for t, m in masks.items()}
    ref = {t: _ras_array(m)[0] > 0 for t, m in (reference or {}).items()}
    union = np.zeros(img.shape, bool)
    for m in list(pred.values()) + list(ref.values()):
        union |= m
    center = (np.array(np.nonzero(union)).mean(1).round().astype(int) if union.any()
              else np.array(img.shape) // 2)
    views = [("axial", lambda a: a[:, :, center[2]].T, (spacing[0], spacing[1])),
             ("coronal", lambda a: a[:, center[1], :].T, (spacing[0], spacing[2])),
             ("sagittal", lambda a: a[center[0], :, :].T, (spacing[1], spacing[2]))]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (name, cut, (sx, sy)) in zip(axes, views):
        sl = cut(img)
        origin = "lower" if name != "axial" else "upper"
        ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, origin=origin, aspect=sy / sx,
                  interpolation="nearest")
        for task, m in pred.items():
            c = np.array(colors.get(task, (255, 255, 0))) / 255
            s = cut(m)
            if s.any():
                ax.contour(s.astype(float), levels=[0.5], colors=[c], linewidths=1.6)
            if task in ref and cut(ref[task]).any():
                ax.contour(cut(ref[task]).astype(float), levels=[0.5], colors=[c], linewidths=1.0,
                           linestyles="dashed")
        ax.set_title(name)
        ax.axis("off")
    handles = [plt.Line2D([], [], color=np.array(colors.get(t, (255, 255, 0))) / 255, label=t) for t in pred]
    if ref:
        handles.append(plt.Line2D([], [], color="gray", linestyle="dashed", label="reference"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False,
               labelcolor="black")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def bar_chart(groups: dict[str, dict[str, float]], out: str | Path, title: str = "",
              errors: Optional[dict[str, dict[str, float]]] = None, ylabel: str = "Dice") -> Path:
    """groups: series name -> {category: value}; one group of bars per category."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(groups)
    categories = sorted({c for g in groups.values() for c in g})
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(min(16, max(6, 0.25 * len(categories) * len(series) + 2)), 5))
    for i, s in enumerate(series):
        xs = np.arange(len(categories)) + i * width
        ys = [groups[s].get(c, np.nan) for c in categories]
        err = [errors[s].get(c, 0) for c in categories] if errors and s in errors else None
        ax.bar(xs, ys, width, yerr=err, label=s, capsize=2)
    ax.set_xticks(np.arange(len(categories)) + width * (len(series) - 1) / 2)
    ax.set_xticklabels(categories, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    if len(series) > 4:  # many series: the legend beside the plot, not over the bars
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
