"""COCOeval through groupnorm.train.coco_eval: perfect predictions give AP 1, none give 0, conversions are exact."""

import pytest
import torch
from pycocotools import mask as mask_utils

from groupnorm.data.coco import CocoDataset
from groupnorm.data.scenes import SceneSpec, ensure_scenes
from groupnorm.train.coco_eval import coco_evaluate, to_coco_results

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside pycocotools


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    root = ensure_scenes(
        SceneSpec(train_images=2, val_images=8, image_size=64, max_scale=1.6), tmp_path_factory.mktemp("s")
    )
    return CocoDataset(root / "val", root / "annotations" / "instances_val.json", train=False)


def _perfect_outputs(data: CocoDataset) -> tuple[list[dict], list[int]]:
    """torchvision-format outputs equal to the ground truth (masks as probabilities (n, 1, H, W))."""
    outputs, ids = [], []
    for i in range(len(data)):
        _, t = data[i]
        outputs.append(
            {
                "boxes": t["boxes"],
                "labels": t["labels"],
                "scores": torch.ones(len(t["boxes"])),
                "masks": t["masks"][:, None].float(),
            }
        )
        ids.append(int(t["image_id"]))
    return outputs, ids


def _ap(metrics, iou_type, key="AP"):
    return metrics[iou_type][key]


def test_perfect_predictions_give_ap_1(val):
    outputs, ids = _perfect_outputs(val)
    results = to_coco_results(outputs, ids, val.cat_id_of_label)
    assert len(results) == len(val.coco.getAnnIds())
    metrics = coco_evaluate(val.coco, results)
    for t in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75"):
            assert _ap(metrics, t, k) == pytest.approx(1.0)
        assert metrics[t]["APl"] is None  # no large objects in 64-pixel scenes: COCOeval's -1
    assert "Average Precision" in metrics["bbox"]["summary"]


def test_empty_predictions_give_ap_0(val):
    metrics = coco_evaluate(val.coco, [])
    for t in ("bbox", "segm"):
        assert _ap(metrics, t) == 0.0 and _ap(metrics, t, "AP50") == 0.0
    outputs, ids = _perfect_outputs(val)
    nothing = [{k: v[:0] for k, v in o.items()} for o in outputs]
    assert to_coco_results(nothing, ids, val.cat_id_of_label) == []


def test_wrong_classes_and_shifted_boxes_lower_ap(val):
    outputs, ids = _perfect_outputs(val)
    wrong = [{**o, "labels": o["labels"] % 10 + 1} for o in outputs]
    assert _ap(coco_evaluate(val.coco, to_coco_results(wrong, ids, val.cat_id_of_label)), "bbox") == 0.0
    shifted = [{**o, "boxes": o["boxes"] + torch.tensor([3.0, 0.0, 3.0, 0.0])} for o in outputs]
    metrics = coco_evaluate(val.coco, to_coco_results(shifted, ids, val.cat_id_of_label), ["bbox"])
    assert 0.0 < _ap(metrics, "bbox") < 1.0 and "segm" not in metrics


def test_mask_results_are_scored_by_mask_and_box_results_by_box(val):
    """A perfect box with an empty mask: box AP 1, mask AP 0 (each type evaluated on its own results)."""
    outputs, ids = _perfect_outputs(val)
    hollow = [{**o, "masks": torch.zeros_like(o["masks"])} for o in outputs]
    metrics = coco_evaluate(val.coco, to_coco_results(hollow, ids, val.cat_id_of_label))
    assert _ap(metrics, "bbox") == pytest.approx(1.0) and _ap(metrics, "segm") == 0.0


def test_results_round_trip(val):
    outputs, ids = _perfect_outputs(val)
    res = to_coco_results(outputs[:1], ids[:1], val.cat_id_of_label)
    anns = val.coco.loadAnns(val.coco.getAnnIds(imgIds=[ids[0]]))
    assert sorted(r["bbox"] for r in res) == sorted(a["bbox"] for a in anns)
    for r in res:
        assert mask_utils.area(r["segmentation"]) > 0 and isinstance(r["segmentation"]["counts"], str)


def test_bad_input_is_named(val):
    with pytest.raises(ValueError, match="iou_types must be among bbox, segm; got 'keypoints'"):
        coco_evaluate(val.coco, [], ["keypoints"])
    with pytest.raises(TypeError, match="results must be a list of dicts"):
        coco_evaluate(val.coco, {"image_id": 1})
    box_only = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.9}]
    with pytest.raises(ValueError, match="segm evaluation needs a 'segmentation'"):
        coco_evaluate(val.coco, box_only)
    with pytest.raises(ValueError, match="images not in the ground truth"):
        coco_evaluate(val.coco, [{**box_only[0], "image_id": 999}], ["bbox"])
    outputs, ids = _perfect_outputs(val)
    with pytest.raises(ValueError, match=r"label \d+ has no category \(known: \[\]\)"):
        to_coco_results(outputs[:1], ids[:1], {})
