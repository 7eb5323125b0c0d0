"""Detection and instance segmentation: torchvision's Mask R-CNN with norms from a norm spec, COCO data and COCOeval.

    from groupnorm.detection import DetectionConfig, train_detection
    result = train_detection(DetectionConfig(backbone_norm="gn:8", pretrained="..."), "runs")

- scenes: a COCO-format dataset built from real Fashion-MNIST items, generated once and reused;
- data: any COCO-format dataset through pycocotools, in torchvision's detection format;
- model: torchvision's MaskRCNN on a ResNet-FPN backbone, GN heads (4conv1fc box head, GN mask head);
- evaluate: pycocotools' COCOeval (box and mask AP, AP50, AP75, APs/m/l);
- train: the training loop (virtual devices, torchrun, checkpoints, exact resume, records).
"""

from groupnorm.detection.config import DetectionConfig, detection_lr
from groupnorm.detection.data import CocoDataset, DetectionLoader, load_coco
from groupnorm.detection.evaluate import coco_evaluate, to_coco_results
from groupnorm.detection.model import build_mask_rcnn, load_backbone_weights, optimizer_groups
from groupnorm.detection.scenes import SceneSpec, default_scenes_root, ensure_scenes
from groupnorm.detection.train import (
    check_detection_configs,
    detection_cost,
    evaluate_detector,
    open_datasets,
    train_detection,
)

__all__ = [
    "CocoDataset",
    "DetectionConfig",
    "DetectionLoader",
    "SceneSpec",
    "build_mask_rcnn",
    "check_detection_configs",
    "coco_evaluate",
    "default_scenes_root",
    "detection_cost",
    "detection_lr",
    "ensure_scenes",
    "evaluate_detector",
    "load_backbone_weights",
    "load_coco",
    "open_datasets",
    "optimizer_groups",
    "to_coco_results",
    "train_detection",
]
