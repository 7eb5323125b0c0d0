"""COCO evaluation through pycocotools' COCOeval: box and mask AP, AP50, AP75, AP small / medium / large.

    results = to_coco_results(outputs, image_ids, cat_id_of_label)   # torchvision outputs -> COCO results
    metrics = coco_evaluate(coco_gt, results)                          # {"bbox": {"AP": ..., ...}, "segm": {...}}

Values are pycocotools' (0..1; None where COCOeval gives -1, i.e. no ground truth of that
size). An empty list of results is evaluated too (every AP 0 where there is ground truth), by
handing COCOeval a result set with no detections, since ``COCO.loadRes`` rejects an empty list.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["IOU_TYPES", "METRICS", "coco_evaluate", "to_coco_results"]

IOU_TYPES = ("bbox", "segm")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six of COCOeval.stats


def to_coco_results(
    outputs: Iterable[dict[str, torch.Tensor]],
    image_ids: Iterable[int],
    cat_id_of_label: dict[int, int],
    *,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """torchvision detector outputs (boxes xyxy, labels, scores, masks (n, 1, H, W) in 0..1) -> COCO results.

    Each result has image_id, category_id, bbox (xywh), score and, where the output has masks,
    segmentation (a compressed RLE of the mask thresholded at ``mask_threshold``).
    """
    from pycocotools import mask as mask_utils

    results: list[dict[str, Any]] = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].detach().cpu().float()
        if len(boxes) == 0:
            continue
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        scores = out["scores"].detach().cpu().tolist()
        labels = out["labels"].detach().cpu().tolist()
        rles = None
        if "masks" in out:
            binary = (out["masks"].detach().cpu()[:, 0] > mask_threshold).numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for k in range(len(boxes)):
            label = int(labels[k])
            if label not in cat_id_of_label:
                raise ValueError(f"to_coco_results: label {label} has no category (known: {sorted(cat_id_of_label)})")
            res = {
                "image_id": int(image_id),
                "category_id": cat_id_of_label[label],
                "bbox": [round(v, 2) for v in xywh[k]],
                "score": float(scores[k]),
            }
            if rles is not None:
                rle = rles[k]
                res["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            results.append(res)
    return results


def _empty_results(coco_gt):
    from pycocotools.coco import COCO

    res = COCO()
    res.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
    }
    res.dataset["annotations"] = []
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def coco_evaluate(
    coco_gt,
    results: Sequence[dict[str, Any]],
    iou_types: Sequence[str] = IOU_TYPES,
    *,
    image_ids: Sequence[int] | None = None,
) -> dict[str, dict[str, float | None]]:
    """COCOeval of ``results`` against the ground truth ``coco_gt`` (a pycocotools COCO).

    Args:
        results: COCO-format results (to_coco_results); may be empty.
        iou_types: "bbox" and/or "segm" (segm needs a segmentation in every result).
        image_ids: evaluate on these images only (default: every image of ``coco_gt``).

    Returns:
        {iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl": value in 0..1 or None}, plus
        "summary": COCOeval's printed table}.
    """
    from pycocotools.cocoeval import COCOeval

    for t in iou_types:
        if t not in IOU_TYPES:
            raise ValueError(f"coco_evaluate: iou_types must be among {', '.join(IOU_TYPES)}; got {t!r}")
    if not isinstance(results, (list, tuple)):
        raise TypeError(f"coco_evaluate: results must be a list of dicts; got {type(results).__name__}")
    if "segm" in iou_types and any("segmentation" not in r for r in results):
        raise ValueError("coco_evaluate: segm evaluation needs a 'segmentation' in every result")
    known = set(coco_gt.getImgIds())
    unknown = {r["image_id"] for r in results} - known
    if unknown:
        raise ValueError(f"coco_evaluate: results for images not in the ground truth: {sorted(unknown)[:5]}")
    out: dict[str, dict[str, Any]] = {}
    for iou_type in iou_types:
        # as Detectron and torchvision's references do: box results without masks, mask results without
        # boxes, so that a mask result's area (for the small / medium / large ranges) is the mask's
        drop = "segmentation" if iou_type == "bbox" else "bbox"
        own = [{k: copy.deepcopy(v) for k, v in r.items() if k != drop} for r in results]
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            dets = coco_gt.loadRes(own) if own else _empty_results(coco_gt)
            ev = COCOeval(coco_gt, dets, iou_type)
            if image_ids is not None:
                ev.params.imgIds = sorted(int(i) for i in image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = ev.stats[: len(METRICS)]
        out[iou_type] = {k: (None if v < 0 else float(v)) for k, v in zip(METRICS, stats, strict=True)}
        out[iou_type]["summary"] = "\n".join(line for line in buffer.getvalue().splitlines() if "Average" in line)
    return out
