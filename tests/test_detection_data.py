"""The scene generator (COCO format, written once, deterministic) and the COCO dataset and loader."""

import json
import os

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from groupnorm.data import scenes as scenes_module
from groupnorm.data.coco import CocoDataset, DetectionLoader, load_coco
from groupnorm.data.fashion_mnist import CLASSES
from groupnorm.data.scenes import SceneSpec, ensure_scenes

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside pycocotools

SPEC = SceneSpec(train_images=10, val_images=5, image_size=64, max_scale=1.6, seed=3)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return ensure_scenes(SPEC, tmp_path_factory.mktemp("scenes"))


def test_layout_and_the_json_loads_in_pycocotools(scenes):
    assert scenes.name == SPEC.id
    meta = json.loads((scenes / "scenes.json").read_text())
    assert meta["spec"]["train_images"] == 10 and len(meta["mean"]) == len(meta["std"]) == 3
    for split, count in (("train", 10), ("val", 5)):
        coco = load_coco(scenes / "annotations" / f"instances_{split}.json")
        assert len(coco.getImgIds()) == count
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        assert len(coco.getAnnIds()) >= SPEC.min_items * count - count  # rarely an item is dropped, never many
        for img in coco.loadImgs(coco.getImgIds()):
            assert (scenes / split / img["file_name"]).is_file()
            assert (img["height"], img["width"]) == (64, 64)


def test_masks_match_boxes_and_areas(scenes):
    coco = load_coco(scenes / "annotations" / "instances_train.json")
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = mask_utils.decode(ann["segmentation"])
        assert mask.shape == (64, 64) and mask.sum() == ann["area"] > 0
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        np.testing.assert_array_equal(coco.annToMask(ann), mask)  # what training reads
        assert 1 <= ann["category_id"] <= 10 and ann["iscrowd"] == 0


def test_instances_do_not_overlap_and_occlusion_is_bounded(scenes):
    coco = load_coco(scenes / "annotations" / "instances_val.json")
    for image_id in coco.getImgIds():
        masks = [coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]
        total = np.sum(masks, axis=0)
        assert total.max() <= 1  # visible masks: each pixel belongs to at most one item


def test_generation_is_deterministic_and_written_once(scenes, tmp_path):
    again = ensure_scenes(SPEC, tmp_path)
    for rel in ("annotations/instances_train.json", "annotations/instances_val.json", "train/000000000003.png"):
        assert (again / rel).read_bytes() == (scenes / rel).read_bytes()
    stamp = os.stat(again / "annotations" / "instances_train.json").st_mtime_ns
    assert ensure_scenes(SPEC, tmp_path) == again
    assert os.stat(again / "annotations" / "instances_train.json").st_mtime_ns == stamp  # reused, not rewritten
    other = SceneSpec(**{**SPEC.__dict__, "seed": 4})
    assert other.id != SPEC.id


def test_an_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    real = scenes_module._write_split

    def fail_on_val(spec, split, out, data_dir):
        if split == "val":
            raise KeyboardInterrupt
        return real(spec, split, out, data_dir)

    monkeypatch.setattr(scenes_module, "_write_split", fail_on_val)
    with pytest.raises(KeyboardInterrupt):
        ensure_scenes(SPEC, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"train_images": 0}, "train_images must be a positive int"),
        ({"min_items": 3, "max_items": 2}, "max_items must be >= min_items"),
        ({"max_scale": 4.0}, "does not fit an image of 96"),
        ({"min_scale": 0.0}, "need 0 < min_scale"),
        ({"max_occlusion": 1.0}, "max_occlusion must be in [0, 1)"),
    ],
)
def test_bad_scene_specs_are_rejected(kw, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        SceneSpec(**kw)


def test_dataset_targets_in_torchvision_format(scenes):
    data = CocoDataset(scenes / "train", scenes / "annotations" / "instances_train.json", train=True)
    assert len(data) == 10 and data.num_classes == 11
    assert data.cat_id_of_label == {i: i for i in range(1, 11)}  # category ids 1..10 map to labels 1..10
    image, target = data[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    n = len(target["boxes"])
    assert n >= 1 and target["masks"].shape == (n, 64, 64) and target["labels"].shape == (n,)
    for box, mask in zip(target["boxes"], target["masks"], strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # xyxy, exclusive right/bottom


def test_missing_files_are_named(tmp_path, scenes):
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        CocoDataset(scenes / "train", tmp_path / "nope.json", train=True)
    with pytest.raises(FileNotFoundError, match="images folder not found"):
        CocoDataset(tmp_path / "nope", scenes / "annotations" / "instances_train.json", train=True)


def test_loader_batches_are_a_function_of_position_and_flips_keep_masks_on_boxes(scenes):
    data = CocoDataset(scenes / "train", scenes / "annotations" / "instances_train.json", train=True)
    loader = DetectionLoader(data, 2, train=True, seed=5)
    assert len(loader) == 5
    full = list(loader.epoch(1))
    resumed = list(loader.epoch(1, start_step=3))
    for (xa, ta), (xb, tb) in zip(full[3:], resumed, strict=True):
        for a, b in zip(xa, xb, strict=True):
            torch.testing.assert_close(a, b)
        for a, b in zip(ta, tb, strict=True):
            torch.testing.assert_close(a["boxes"], b["boxes"])
    assert [t["image_id"].item() for _, ts in full for t in ts] != [
        t["image_id"].item() for _, ts in loader.epoch(2) for t in ts
    ]  # another epoch, another order
    for images, targets in full:
        for img, t in zip(images, targets, strict=True):
            assert img.dtype == torch.float32 and img.min() >= 0 and img.max() <= 1
            for box, mask in zip(t["boxes"], t["masks"], strict=True):
                ys, xs = torch.nonzero(mask, as_tuple=True)
                assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_loader_shards_across_processes_and_evaluates_every_image(scenes):
    data = CocoDataset(scenes / "val", scenes / "annotations" / "instances_val.json", train=False)
    seen = []
    for rank in range(2):
        loader = DetectionLoader(data, 2, train=False, rank=rank, world=2)
        seen += [t["image_id"].item() for _, ts in loader.epoch(0) for t in ts]
    assert sorted(seen) == sorted(data.image_ids)
    train = [
        [t["image_id"].item() for _, ts in DetectionLoader(data, 1, train=True, rank=r, world=2).epoch(0) for t in ts]
        for r in range(2)
    ]
    assert not set(train[0]) & set(train[1])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        DetectionLoader(data, 0, train=True)
    with pytest.raises(ValueError, match="a step takes 12 images but the training set has 5"):
        DetectionLoader(data, 6, train=True, world=2)
