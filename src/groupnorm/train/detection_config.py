"""What one detection run is: a RunConfig (groupnorm.train.config) with Mask R-CNN's data, model and recipe."""

from __future__ import annotations

from dataclasses import dataclass

from groupnorm.data.scenes import SceneSpec
from groupnorm.train.config import RunConfig, hashed_unless_default, slug, unhashed

__all__ = ["HEADS", "IMAGENET_MEAN", "IMAGENET_STD", "DetectionConfig"]

HEADS = ("2fc", "4conv1fc")
DATASETS = ("scenes", "coco")
BACKBONES = ("tvresnet", "resnet50")
BACKBONE_STATS = ("pretrained", "target")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DetectionConfig(RunConfig):
    """One Mask R-CNN run (torchvision's MaskRCNN on a ResNet-FPN backbone, evaluated with pycocotools).

    The defaults are the paper's recipe (Detectron's e2e Mask R-CNN R-50-FPN, 1x) at the scale
    of the scene dataset; the experiment's presets set the rest.
    """

    variant: str = ""  # a label for reports (e.g. "GN", "BN*"); part of the id
    # data
    dataset: str = "scenes"  # scenes (generated from Fashion-MNIST) | coco (a COCO-format folder in data_dir)
    scene_seed: int = 0
    scene_train: int = 1000
    scene_val: int = 200
    scene_size: int = 96
    scene_items: tuple[int, int] = (2, 4)
    scene_scales: tuple[float, float] = (0.9, 2.0)
    train_split: str = "train2017"  # coco: <data_dir>/<split>/ and <data_dir>/annotations/instances_<split>.json
    val_split: str = "val2017"
    min_size: int = 0  # the transform's resize (0: the scene size; COCO: 800)
    max_size: int = 0  # (0: the scene size; COCO: 1333)
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    hflip: bool = True
    # backbone
    backbone: str = "tvresnet"  # tvresnet (any width) | resnet50 (torchvision's)
    depth: int = 10
    width: int = 16
    backbone_norm: str = "gn"  # BN* (bn:frozen, pre-trained only), bn (per device), bn:sync, gn:G, ...
    # init (RunConfig): the backbone's classification checkpoint (relative to the runs dir or absolute); "": scratch
    # BN*'s frozen statistics: the pre-trained classifier's, or re-estimated on this run's training images
    # ("target": one PreciseBN pass over up to 1000 of them before training, then frozen again)
    backbone_stats: str = hashed_unless_default("pretrained")
    trainable_layers: int = 5  # backbone stages trained, from layer4 down (5: all, stem included; 3: Detectron's)
    # FPN and heads
    fpn_channels: int = 256
    fpn_norm: str = "gn"
    head: str = "4conv1fc"  # 2fc: torchvision's TwoMLPHead | 4conv1fc: the paper's GN box head
    head_norm: str = "gn"  # of the box head's convs (4conv1fc) and the mask head's convs
    head_channels: int = 256  # conv channels of the box (4conv1fc) and mask heads
    fc_channels: int = 1024  # the box head's fc width
    box_pool: int = 7  # RoIAlign output of the box head; the mask head's is mask_pool (masks are 2 x mask_pool)
    mask_pool: int = 14
    anchor_size: int = 32  # anchors of side anchor_size x 2^level on P2..P6
    rpn_batch_per_image: int = 256
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    box_batch_per_image: int = 512
    detections_per_image: int = 100
    # the batch and optimisation (paper: 8 GPUs x 2 images, lr 0.02, wd 1e-4, 0 on gamma/beta; Detectron's 1x:
    # lr / 10 at 2/3 and 8/9 of training). The lr rule is every task's: base_lr x images_per_device / 2.
    experiment: str = "detection"
    images_per_device: int = 2
    devices: int = 8
    epochs: int = 12
    base_lr: float = 0.02
    reference_images_per_device: int = 2
    schedule: str = "step"
    milestones: tuple[float, ...] = (2 / 3, 8 / 9)
    warmup_epochs: float = 0.5
    norm_weight_decay: float = 0.0  # on gamma and beta of every norm (paper: 0 when fine-tuning)
    zero_init_last: bool = True  # gamma = 0 in residual blocks' last norms, from scratch only
    eval_every: int = 0  # evaluate every this many epochs (0: at the end only)
    # how it runs (not part of the run id); data_dir: coco: the dataset folder; scenes: where they go (cache)
    fashion_mnist_dir: str = unhashed("")
    eval_batch: int = unhashed(8)
    sample_images: int = unhashed(6)  # validation images whose predictions are kept for the report's figure

    def __post_init__(self) -> None:
        """Reject a config that cannot run before anything trains."""
        from groupnorm.nn.spec import parse_norm_spec

        super().__post_init__()
        choices = {"dataset": DATASETS, "backbone": BACKBONES, "head": HEADS, "backbone_stats": BACKBONE_STATS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        for key in ("backbone_norm", "fpn_norm", "head_norm"):
            try:
                parse_norm_spec(getattr(self, key))
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
        for key in ("fpn_norm", "head_norm"):
            spec = parse_norm_spec(getattr(self, key))
            if spec.uses_batch_statistics:
                raise ValueError(
                    f"{key}={getattr(self, key)!r}: BN with batch statistics is not supported after the backbone "
                    "(RoI batches have no per-device blocks); use gn, ln, in, bn:frozen or none"
                )
            if spec.ws:
                raise ValueError(f"{key}={getattr(self, key)!r}: ws+ applies to the backbone only")
        positive = (
            "images_per_device", "devices", "epochs", "depth", "width", "fpn_channels", "head_channels",
            "fc_channels", "box_pool", "mask_pool", "anchor_size", "rpn_batch_per_image", "rpn_pre_nms_train",
            "rpn_post_nms_train", "rpn_pre_nms_test", "rpn_post_nms_test", "box_batch_per_image",
            "detections_per_image", "eval_batch",
        )  # fmt: skip
        for key in positive:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int; got {value!r}")
        for key in ("min_size", "max_size", "eval_every", "sample_images"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0; got {getattr(self, key)!r}")
        if not 0 <= self.trainable_layers <= 5:
            raise ValueError(f"trainable_layers must be in 0..5; got {self.trainable_layers!r}")
        if not self.init and self.trainable_layers != 5:
            raise ValueError(
                f"a backbone trained from scratch trains every layer: trainable_layers=5; got {self.trainable_layers}"
            )
        if not self.init and parse_norm_spec(self.backbone_norm).variant == "frozen":
            raise ValueError("backbone_norm='bn:frozen' (BN*) freezes statistics a pretrained backbone brings; "
                             "from scratch use bn, bn:sync or gn")  # fmt: skip
        if self.backbone_stats == "target" and parse_norm_spec(self.backbone_norm).variant != "frozen":
            raise ValueError(
                f"backbone_stats='target' re-estimates BN*'s frozen statistics: it needs backbone_norm='bn:frozen'; "
                f"got {self.backbone_norm!r}"
            )
        if self.backbone == "resnet50" and (self.depth, self.width) != (50, 64):
            raise ValueError(f"backbone resnet50 has depth 50, width 64; got depth={self.depth}, width={self.width}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(
                f"image_mean and image_std need 3 values (std > 0); got {self.image_mean!r}, {self.image_std!r}"
            )
        if self.dataset == "scenes":
            self.scene_spec  # noqa: B018 - validates the scene fields
        elif not self.data_dir:
            raise ValueError(
                "dataset coco needs data_dir (a folder with annotations/instances_<split>.json and <split>/)"
            )

    # ------------------------------------------------------------------ derived
    @property
    def scene_spec(self) -> SceneSpec:
        return SceneSpec(
            seed=self.scene_seed,
            train_images=self.scene_train,
            val_images=self.scene_val,
            image_size=self.scene_size,
            min_items=self.scene_items[0],
            max_items=self.scene_items[1],
            min_scale=self.scene_scales[0],
            max_scale=self.scene_scales[1],
        )

    @property
    def resize(self) -> tuple[int, int]:
        """(min_size, max_size) of torchvision's GeneralizedRCNNTransform."""
        if self.dataset == "scenes":
            return self.min_size or self.scene_size, self.max_size or self.scene_size
        return self.min_size or 800, self.max_size or 1333

    @property
    def fine_tuned(self) -> bool:
        return bool(self.init)

    def name(self) -> str:
        data = f"scenes{self.scene_size}" if self.dataset == "scenes" else "coco"
        model = f"r{self.depth}w{self.width}" if self.backbone == "tvresnet" else self.backbone
        backbone = slug(self.backbone_norm.replace(":frozen", "frozen"))
        if self.backbone_stats != "pretrained":
            backbone += f"-{self.backbone_stats}"
        start = "pre" if self.init else "scratch"
        head = f"{self.head}-{slug(self.head_norm)}"
        return f"{data}_{model}_{backbone}_{start}_{head}_b{self.images_per_device}_s{self.seed}"
