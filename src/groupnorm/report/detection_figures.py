"""The detection report's figures: validation images with each variant's boxes and masks; loss and AP per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from groupnorm.report.common import pyplot

if TYPE_CHECKING:
    from groupnorm.report.detection import Cell

__all__ = ["fig_curves", "fig_samples"]


def _read_rgb(path: str):
    """An image file as float RGB (H, W, 3) in 0..1."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as f:
        return np.asarray(f.convert("RGB"), dtype=np.float32) / 255


def _draw(ax, image, detections: list[dict[str, Any]], names: dict[int, str], cmap) -> None:
    """One image with its boxes, masks (blended in) and class labels (with scores for predictions)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    overlay = image.copy()
    for k, d in enumerate(detections):
        if "segmentation" in d:
            m = mask_utils.decode(d["segmentation"]).astype(bool)
            overlay[m] = 0.5 * overlay[m] + 0.5 * np.array(cmap(k % 10)[:3])
    ax.imshow(overlay)
    for k, d in enumerate(detections):
        x, y, w, h = d["bbox"]
        ax.add_patch(_rectangle((x - 0.5, y - 0.5), w, h, cmap(k % 10)))
        text = names.get(d["category_id"], str(d["category_id"])) + (f" {d['score']:.2f}" if "score" in d else "")
        ax.text(x, y - 1, text, fontsize=5, color="white", bbox={"facecolor": cmap(k % 10), "pad": 0.5, "lw": 0})
    ax.set_xticks([])
    ax.set_yticks([])


def _rectangle(xy, w, h, color):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, w, h, fill=False, color=color, lw=1.2)


def fig_samples(cells: list[Cell]):
    """Rows: the ground truth, then each variant's predictions (its first seed); columns: validation images."""
    import json

    shown = []
    for c in cells:
        for r in sorted(c.ok, key=lambda r: r.config["seed"]):
            if (r.run_dir / "samples.json").is_file():
                images = json.loads((r.run_dir / "samples.json").read_text())["images"]
                shown.append((c, {im["image_id"]: im for im in images}))
                break
    if not shown:
        return None
    images = list(shown[0][1].values())
    if not images or not all(Path(im["file"]).is_file() for im in images):
        return None  # the dataset is not on this machine
    coco = _val_coco(shown[0][0].config)
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]} if coco else {}
    rows = []
    if coco is not None:
        rows.append(("ground truth", [coco.loadAnns(coco.getAnnIds(imgIds=[im["image_id"]])) for im in images]))
    for c, by_id in shown:
        rows.append((c.label, [by_id.get(im["image_id"], {}).get("detections", []) for im in images]))
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), len(images), figsize=(2.1 * len(images), 2.2 * len(rows)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    pixels = [_read_rgb(im["file"]) for im in images]
    for row, (title, per_image) in enumerate(rows):
        for col, dets in enumerate(per_image):
            _draw(axes[row][col], pixels[col], dets, names, cmap)
        axes[row][0].set_ylabel(title, fontsize=8)
    fig.tight_layout()
    return fig


def _dataset_of(cfg: dict[str, Any]):
    from groupnorm.train.detection import dataset_paths
    from groupnorm.train.detection_config import DetectionConfig

    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    return dataset_paths(DetectionConfig(**fields), generate=False)["val"][1]


def _val_coco(cfg: dict[str, Any]):
    """pycocotools' COCO of the run's validation split, or None where it is not on this machine."""
    from groupnorm.data.coco import load_coco

    try:
        return load_coco(_dataset_of(cfg))
    except (FileNotFoundError, TypeError, ValueError):
        return None


def fig_curves(cells: list[Cell]):
    plt = pyplot()
    evaluated = any(len(c.evaluated_curve("bbox_AP")[0]) > 1 for c in cells)
    fig, axes = plt.subplots(1, 3 if evaluated else 1, figsize=(13 if evaluated else 5, 3.6), squeeze=False)
    for c in cells:
        e, v = c.evaluated_curve("loss")
        axes[0][0].plot(e, v, marker=".", label=c.label)
        if evaluated:
            for ax, key in zip(axes[0][1:], ("bbox_AP", "segm_AP"), strict=True):
                e, v = c.evaluated_curve(key)
                ax.plot(e, v, marker="o", label=c.label)
    titles = ["training loss (sum of Mask R-CNN's losses)", "box AP (val)", "mask AP (val)"]
    for ax, title in zip(axes[0], titles, strict=False):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig
