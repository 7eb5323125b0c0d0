"""Detection and instance segmentation transfer (paper Sec. 6.1: Tables 4 to 7), on torchvision's Mask R-CNN.

Two stages, both records under ``runs/detection``:

1. pre-training: the backbone (a torchvision-style ResNet) is trained as a classifier by the
   run engine's classification task with BN and with GN, as the paper transfers its ImageNet
   models; records in ``runs/detection/pretrain/<run-id>/``;
2. detection: Mask R-CNN (ResNet-FPN) fine-tuned from those checkpoints (each run's ``init``),
   or trained from scratch, on a COCO-format dataset (by default scenes of real Fashion-MNIST
   items) at 2 images per (virtual) device, evaluated with COCOeval; records in
   ``runs/detection/<run-id>/``.

The variants (``Preset.variants``):

    bn*             BN* backbone (BN frozen into an affine: the paper's baseline), GN FPN and heads
    bn*-target      BN* whose frozen statistics are re-estimated on the detection training images first (why
                    BN* trails fine-tuned BN here: the pre-training domain's statistics against the scenes')
    bn*-plain       BN* backbone, no norm in the FPN or heads, 2fc box head (Table 5, first row)
    bn              BN fine-tuned at images_per_device images per device (its statistics per device), GN heads
    gn              GN backbone, GN FPN and heads (the paper's GN Mask R-CNN)
    gn-scratch      GN everywhere, from scratch (Table 7)
    syncbn-scratch  SyncBN backbone (statistics over all devices), GN heads, from scratch (Table 7's baseline)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from groupnorm.train.config import TrainConfig, config_from
from groupnorm.train.detection import dataset_paths
from groupnorm.train.detection_config import IMAGENET_MEAN, IMAGENET_STD, DetectionConfig
from groupnorm.train.records import CHECKPOINT

__all__ = [
    "NAME",
    "PRESETS",
    "PRETRAIN_EXPERIMENT",
    "VARIANTS",
    "Preset",
    "Variant",
    "configs",
    "prepare",
    "pretrain_configs",
]

NAME = "detection"
PRETRAIN_EXPERIMENT = f"{NAME}/pretrain"


@dataclass(frozen=True)
class Variant:
    """One row of the paper's tables: which norm where, and whether the backbone is pre-trained.

    ``backbone`` is a norm spec, or "gn" for the preset's backbone_gn; ``heads`` is "gn" (the
    preset's head_gn in the FPN, the 4conv1fc box head and the mask head) or "none" (2fc box head).
    """

    label: str
    backbone: str
    heads: str
    pretrained: bool
    description: str
    backbone_stats: str = "pretrained"  # BN*'s frozen statistics: the classifier's, or "target" (re-estimated)


VARIANTS: dict[str, Variant] = {
    "bn*": Variant("BN*", "bn:frozen", "gn", True, "BN* backbone (frozen BN), GN FPN and heads"),
    "bn*-target": Variant(
        "BN*, target statistics",
        "bn:frozen",
        "gn",
        True,
        "BN* with its statistics re-estimated on the detection training images, GN FPN and heads",
        backbone_stats="target",
    ),
    "bn*-plain": Variant("BN*, no head norm", "bn:frozen", "none", True, "BN* backbone, no norm after it, 2fc head"),
    "bn": Variant("BN, fine-tuned", "bn", "gn", True, "BN fine-tuned with per-device statistics, GN FPN and heads"),
    "gn": Variant("GN", "gn", "gn", True, "GN backbone, GN FPN and heads"),
    "gn-scratch": Variant("GN, from scratch", "gn", "gn", False, "GN everywhere, no pre-training"),
    "syncbn-scratch": Variant(
        "SyncBN, from scratch", "bn:sync", "gn", False, "SyncBN backbone (statistics over all devices), GN heads"
    ),
}


@dataclass(frozen=True)
class Preset:
    """The grid (variants x seeds) and every size of the model, data and schedule.

    The defaults are the quick preset, sized for under 30 minutes on a quiet 2-core CPU (two
    single-threaded runs side by side; two seeds of each variant; docs/results/detection.md): 96x96
    scenes with 2-4 items of 25-56 pixels, 800 for training and 200 for validation; a ResNet-10 of width
    16 (the paper's ResNet-50 has width 64 and four times the blocks), pre-trained for 10 epochs on 20k
    Fashion-MNIST images; an FPN of 32 channels (paper 256) with anchors of 8 to 128 pixels (paper 32 to
    512, for 800-pixel images); box and mask heads with 32-channel convs and a 128-wide fc (paper 256
    and 1024); per image 64 RPN anchors (paper 256), 300 / 100 proposals before / after NMS in training
    (paper 2000 / 2000 per level and image), 64 RoIs for the box head (paper 512) and 50 detections
    (paper 100); 2 images on each of 4 virtual devices (paper 8 GPUs), 12 epochs of 100 steps with lr/10
    at 2/3 and 8/9 of them (Detectron's 1x shape). The lr is 0.03 at 2 images per device (every task's
    rule: base_lr x images per device / 2), three times the paper's 0.02 per 16 images at this batch of
    8: at the paper's lr the heads had learned little by the end of so short a schedule (GN variant: box
    AP 2.5 at the end of a 6-epoch schedule, against 15.8 after 6 epochs at three times that lr, 30.0
    after 15 and 36.2 once the lr dropped; docs/results/detection.md).
    """

    variants: tuple[str, ...] = ("bn*", "bn*-target", "bn", "gn")
    seeds: tuple[int, ...] = (0, 1)
    # data: generated scenes, or a COCO-format folder (dataset=coco, data_dir=...)
    dataset: str = "scenes"
    data_dir: str = ""
    workers: int = 8  # ImageFolder loader processes (--set workers=N); results do not depend on it
    train_split: str = "train2017"
    val_split: str = "val2017"
    scene_seed: int = 0
    scene_train: int = 800
    scene_val: int = 200
    scene_size: int = 96
    scene_items: tuple[int, int] = (2, 4)
    scene_scales: tuple[float, float] = (0.9, 2.0)
    min_size: int = 0
    max_size: int = 0
    # backbone and its pre-training with the classification engine
    backbone: str = "tvresnet"
    depth: int = 10
    width: int = 16
    backbone_gn: str = "gn:8"  # width 16 with 8 groups: the paper's 64 channels / 32 groups, scaled
    pretrain_dataset: str = "fashion-mnist"
    pretrain_images: int = 20000
    pretrain_epochs: int = 10
    pretrain_images_per_device: int = 32
    pretrain_devices: int = 8
    pretrain_data_dir: str = ""
    bn_checkpoint: str = (
        ""  # an existing BN classifier (e.g. torchvision's ImageNet resnet50 .pth) instead of pre-training
    )
    gn_checkpoint: str = ""  # an existing classifier with backbone_gn, likewise
    trainable_layers: int = 3  # fine-tuning: stem and layer1 frozen, as Detectron and torchvision
    # FPN and heads
    fpn_channels: int = 32
    head_gn: str = "gn:4"  # 32 channels in 4 groups: the paper's 256 / 32, scaled
    head_channels: int = 32
    fc_channels: int = 128
    box_pool: int = 7
    mask_pool: int = 14
    anchor_size: int = 8
    rpn_batch_per_image: int = 64
    rpn_pre_nms_train: int = 300
    rpn_post_nms_train: int = 100
    rpn_pre_nms_test: int = 200
    rpn_post_nms_test: int = 100
    box_batch_per_image: int = 64
    detections_per_image: int = 50
    # the batch and schedule
    images_per_device: int = 2
    devices: int = 4
    epochs: int = 12
    scratch_epochs: int = 0  # from-scratch variants (0: epochs; the paper trains them longer)
    base_lr: float = 0.03  # at 2 images per device; 3x the paper's lr at this batch (see above)
    warmup_epochs: float = 0.5
    eval_every: int = 4


PRESETS: dict[str, Preset] = {
    # End to end in about a minute: what the tests run.
    "smoke": Preset(
        variants=("bn*", "gn"),
        seeds=(0,),
        scene_train=48,
        scene_val=16,
        pretrain_images=2048,
        pretrain_epochs=1,
        epochs=1,
        devices=2,
    ),
    # The default of `groupnorm reproduce detection`: under 30 minutes on a quiet 2-core CPU.
    "quick": Preset(),
    # The quick preset's data and model, 3 seeds, 16 epochs (lr/10 at 10.7 and 14.2) and an evaluation after
    # every epoch, so that the convergence check sees the AP over the last quarter (about 1.5 hours on 2 cores;
    # records in docs/records/detection).
    "medium": Preset(seeds=(0, 1, 2), epochs=16, eval_every=1),
    # Every variant, 3 seeds, larger scenes and a longer schedule (hours on a CPU).
    "full": Preset(
        variants=("bn*-plain", "bn*", "bn*-target", "bn", "gn", "gn-scratch", "syncbn-scratch"),
        seeds=(0, 1, 2),
        scene_train=4000,
        scene_val=500,
        scene_size=128,
        scene_scales=(0.9, 3.0),
        width=32,
        backbone_gn="gn:16",
        pretrain_images=0,
        pretrain_epochs=30,
        fpn_channels=64,
        head_gn="gn:8",
        head_channels=64,
        fc_channels=256,
        rpn_batch_per_image=128,
        rpn_pre_nms_train=1000,
        rpn_post_nms_train=500,
        rpn_pre_nms_test=500,
        rpn_post_nms_test=300,
        box_batch_per_image=128,
        devices=8,
        epochs=24,
        scratch_epochs=48,
        base_lr=0.06,  # 3x the paper's 0.02 at 8 x 2 images
        eval_every=4,
    ),
    # The paper's setting for a lab: ResNet-50-FPN on COCO 2017 (data_dir), backbones pre-trained on
    # ImageNet (pretrain_data_dir: an ImageFolder with train/ and val/; or bn_checkpoint=torchvision's
    # resnet50 .pth and gn_checkpoint=a GN ResNet-50 state dict), 8 GPUs x 2 images, 1x schedule.
    "paper": Preset(
        variants=("bn*-plain", "bn*", "bn", "gn", "gn-scratch", "syncbn-scratch"),
        seeds=(0,),
        dataset="coco",
        backbone="resnet50",
        depth=50,
        width=64,
        backbone_gn="gn:32",
        pretrain_dataset="imagefolder",
        pretrain_images=0,
        pretrain_epochs=100,
        fpn_channels=256,
        head_gn="gn:32",
        head_channels=256,
        fc_channels=1024,
        anchor_size=32,
        rpn_batch_per_image=256,
        rpn_pre_nms_train=2000,
        rpn_post_nms_train=2000,
        rpn_pre_nms_test=1000,
        rpn_post_nms_test=1000,
        box_batch_per_image=512,
        detections_per_image=100,
        devices=8,
        epochs=12,
        scratch_epochs=36,
        base_lr=0.02,
        warmup_epochs=0.1,
        eval_every=0,
    ),
}


def _check(preset: Preset) -> None:
    unknown = [v for v in preset.variants if v not in VARIANTS]
    if unknown or not preset.variants:
        raise ValueError(f"variants must be among {', '.join(VARIANTS)}; got {', '.join(preset.variants) or 'none'}")
    if not preset.seeds:
        raise ValueError("seeds: give at least one seed")
    if preset.dataset == "coco" and not preset.data_dir:
        raise ValueError("dataset coco needs data_dir (a folder with annotations/instances_<split>.json and <split>/)")
    if preset.pretrain_dataset == "imagefolder" and not preset.pretrain_data_dir and _needs_pretraining(preset):
        raise ValueError("pretrain_dataset imagefolder needs pretrain_data_dir (a folder with train/ and val/)")


def _needs_pretraining(preset: Preset) -> bool:
    return any(
        VARIANTS[v].pretrained and not _given_checkpoint(preset, _pretrain_norm(preset, VARIANTS[v]))
        for v in preset.variants
    )


def _given_checkpoint(preset: Preset, norm: str) -> str:
    """The user's checkpoint for the classifier of ``norm`` (bn_checkpoint / gn_checkpoint), or ""."""
    path = preset.bn_checkpoint if norm == "bn" else preset.gn_checkpoint
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"{'bn' if norm == 'bn' else 'gn'}_checkpoint not found: {path}")
    return str(Path(path).resolve()) if path else ""


def _backbone_norm(preset: Preset, variant: Variant) -> str:
    return preset.backbone_gn if variant.backbone == "gn" else variant.backbone


def _pretrain_norm(preset: Preset, variant: Variant) -> str:
    """The classifier whose weights the variant starts from: BN for BN*, BN and SyncBN; GN for GN."""
    norm = _backbone_norm(preset, variant)
    return "bn" if norm.startswith("bn") else norm


def _pretrain_config(preset: Preset, norm: str) -> TrainConfig:
    folder = preset.pretrain_dataset == "imagefolder"
    return TrainConfig(
        experiment=PRETRAIN_EXPERIMENT,
        dataset=preset.pretrain_dataset,
        train_images=preset.pretrain_images,
        model=preset.backbone,
        depth=preset.depth,
        width=preset.width,
        norm=norm,
        images_per_device=preset.pretrain_images_per_device,
        devices=preset.pretrain_devices,
        epochs=preset.pretrain_epochs,
        schedule="step" if folder else "cosine",
        warmup_epochs=0.0 if folder else 1.0,
        data_dir=preset.pretrain_data_dir,
        workers=preset.workers,
    )


def pretrain_configs(preset: Preset) -> list[TrainConfig]:
    """The classification runs whose checkpoints the pre-trained variants start from (one per norm)."""
    _check(preset)
    norms = sorted({_pretrain_norm(preset, VARIANTS[v]) for v in preset.variants if VARIANTS[v].pretrained})
    return [_pretrain_config(preset, n) for n in norms if not _given_checkpoint(preset, n)]


def _normalization(preset: Preset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The detector's input normalization: the pre-training data's (grey -> the same for R, G and B)."""
    from groupnorm.data.datasets import LOADERS, load_image_data

    if preset.pretrain_dataset not in LOADERS:
        return IMAGENET_MEAN, IMAGENET_STD
    data = load_image_data(preset.pretrain_dataset, preset.pretrain_images, 0, preset.pretrain_data_dir or None)
    mean, std = data.mean, data.std
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return tuple(round(m, 4) for m in mean), tuple(round(s, 4) for s in std)


def configs(preset: Preset, log: Callable[[str], None] = print) -> list[DetectionConfig]:
    """Every detection run of the grid (variants x seeds)."""
    _check(preset)
    mean, std = _normalization(preset)
    out = []
    for name in preset.variants:
        v = VARIANTS[name]
        init = ""
        if v.pretrained:
            norm = _pretrain_norm(preset, v)
            init = (
                _given_checkpoint(preset, norm)
                or f"{PRETRAIN_EXPERIMENT}/{_pretrain_config(preset, norm).id}/{CHECKPOINT}"
            )
        head_norm = preset.head_gn if v.heads == "gn" else "none"
        for seed in preset.seeds:
            out.append(
                config_from(
                    preset,
                    DetectionConfig,
                    experiment=NAME,
                    variant=name,
                    image_mean=mean,
                    image_std=std,
                    fashion_mnist_dir=preset.pretrain_data_dir if preset.pretrain_dataset == "fashion-mnist" else "",
                    backbone_norm=_backbone_norm(preset, v),
                    init=init,
                    trainable_layers=preset.trainable_layers if v.pretrained else 5,
                    fpn_norm=head_norm,
                    head="4conv1fc" if v.heads == "gn" else "2fc",
                    head_norm=head_norm,
                    backbone_stats=v.backbone_stats,
                    epochs=preset.epochs if v.pretrained else (preset.scratch_epochs or preset.epochs),
                    seed=seed,
                )
            )
    return out


def prepare(preset: Preset, cfgs: list[DetectionConfig], runs_dir: Path, log: Callable[[str], None] = print) -> None:
    """Generate the scene dataset once, before parallel runs read it."""
    if preset.dataset == "scenes":
        paths = dataset_paths(cfgs[0], generate=False)
        if not paths["val"][1].is_file():
            log(f"detection: generating the scene dataset in {paths['val'][1].parent.parent} (once)")
        dataset_paths(cfgs[0])
