"""torchvision's Mask R-CNN on a ResNet-FPN backbone, with every norm from a norm spec.

    model = build_mask_rcnn(cfg, num_classes=11, devices=8)   # cfg: a groupnorm.train.DetectionConfig

- backbone: a classifier of groupnorm.models (``tvresnet`` of any width, or torchvision's
  ``resnet50``) built with ``cfg.backbone_norm`` (``bn:frozen`` is the paper's BN*, ``bn`` is BN
  fine-tuned with per-device statistics over ``devices`` virtual devices, ``gn:G`` ...), its stem
  and first stages frozen as ``trainable_layers`` says; ``load_backbone_weights`` loads a
  classification checkpoint into it (the run engine does, from the config's ``init``);
- torchvision's FeaturePyramidNetwork (P2-P6) with ``cfg.fpn_norm`` after its convs;
- torchvision's RPN (its head has no norm, as in the paper);
- box head: torchvision's TwoMLPHead (``2fc``) or FastRCNNConvFCHead with four 3x3 convs and
  one fc (``4conv1fc``, the paper's GN head) with ``cfg.head_norm`` after each conv;
- mask head: torchvision's MaskRCNNHeads, four 3x3 convs with ``cfg.head_norm``, and its predictor.

Norm-act specs (``frn``, ``evonorm-s0``, ``gn+relu``): the backbone places them as its builder says
(groupnorm.models); the FPN's norms, which no activation follows, are their plain form (FRN without
TLU, ...); each head conv's norm, followed by torchvision's ReLU, is the norm-act layer and that ReLU
is replaced by an Identity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from groupnorm.models import build_model, norm_factory
from groupnorm.nn.spec import parse_norm_spec

__all__ = ["build_mask_rcnn", "load_backbone_weights", "optimizer_groups", "stage_channels"]

RETURN_LAYERS = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")  # torchvision's convention


def stage_channels(body: nn.Module) -> list[int]:
    """Output channels of layer1..layer4 of a torchvision-style ResNet."""
    known = getattr(body, "stage_channels", None)
    if known:
        return list(known)
    out = []
    for name in RETURN_LAYERS:
        last = getattr(body, name)[-1]
        out.append((last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels)
    return out


def _norm_layer(spec: str, devices: int = 1, *, act: bool = True) -> Callable[[int], nn.Module] | None:
    """A torchvision ``norm_layer`` for ``spec``, or None for ``none`` (so the convs keep their bias).

    ``act``: an activation follows each norm (a norm-act spec gives its norm-act layer, else its plain form).
    """
    if parse_norm_spec(spec).kind == "none":
        return None
    norm = norm_factory(spec, devices)
    return norm if act else partial(norm, act=False)


def _drop_relu_after_norm_act(head: nn.Module) -> None:
    """In torchvision's (conv, norm, ReLU) blocks of ``head``, whose norms are norm-act layers: ReLU -> Identity."""
    from torchvision.ops.misc import Conv2dNormActivation

    for block in head.modules():
        if isinstance(block, Conv2dNormActivation) and isinstance(block[-1], nn.ReLU):
            block[-1] = nn.Identity()


def _adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A stem conv trained on grey images for RGB ones (or back): the same response to a grey image."""
    have = weight.shape[1]
    if have == in_channels:
        return weight
    if have == 1:
        return weight.repeat(1, in_channels, 1, 1) / in_channels
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    raise ValueError(f"cannot adapt a stem conv with {have} input channels to {in_channels}")


def load_backbone_weights(body: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Load a classifier's state dict (groupnorm's, or torchvision's ResNet-50) into ``body``.

    The classifier's fc is dropped; a stem trained on grey images is adapted to RGB. Returns the
    keys left at their initial values (none but the fc's); raises ValueError when the state's norms
    do not match the backbone's (e.g. a BN checkpoint for a GN backbone) or its shapes differ.
    """
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith(("fc.", "module.fc."))}
    if "conv1.weight" in state:
        state["conv1.weight"] = _adapt_first_conv(state["conv1.weight"], body.conv1.weight.shape[1])
    own = body.state_dict()
    # BN* (a frozen affine) and BN share their keys but for BN's step counter
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    missing = [k for k in own if k not in state and not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if unexpected or missing:
        raise ValueError(
            f"the checkpoint does not fit this backbone (were they built with the same norm?): "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"the checkpoint's shapes differ for {bad[:3]}: a different depth or width?")
    result = body.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return list(result.missing_keys)


def _freeze(body: nn.Module, trainable_layers: int) -> None:
    trainable = TRAINABLE_ORDER[:trainable_layers]
    if trainable_layers == 5:
        trainable = (*trainable, "bn1")
    for name, param in body.named_parameters():
        if not name.startswith(trainable):
            param.requires_grad_(False)


def build_mask_rcnn(cfg: Any, num_classes: int, *, devices: int = 1) -> nn.Module:
    """torchvision's MaskRCNN for ``cfg`` (a DetectionConfig: its model fields; see the module docstring).

    Args:
        num_classes: categories plus the background.
        devices: virtual devices in this process, for a ``bn`` backbone.
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    body = build_model(
        cfg.backbone,
        norm=cfg.backbone_norm,
        num_classes=1000,
        in_channels=3,
        devices=devices,
        zero_init_last=cfg.zero_init_last and not cfg.init,
        depth=cfg.depth,
        width=cfg.width,
    )
    _freeze(body, cfg.trainable_layers)
    body.fc = nn.Identity()  # not used by the FPN; keeps no dead parameters around

    fpn_norm = _norm_layer(cfg.fpn_norm, act=False)  # the FPN's convs have no activation
    backbone = BackboneWithFPN(
        body, RETURN_LAYERS, stage_channels(body), cfg.fpn_channels, LastLevelMaxPool(), norm_layer=fpn_norm
    )
    anchors = AnchorGenerator(tuple((cfg.anchor_size * 2**i,) for i in range(5)), ((0.5, 1.0, 2.0),) * 5)
    c = cfg.fpn_channels
    head_norm = _norm_layer(cfg.head_norm)
    if cfg.head == "4conv1fc":
        box_head: nn.Module = FastRCNNConvFCHead(
            (c, cfg.box_pool, cfg.box_pool), [cfg.head_channels] * 4, [cfg.fc_channels], norm_layer=head_norm
        )
    else:
        box_head = TwoMLPHead(c * cfg.box_pool**2, cfg.fc_channels)
    features = ["0", "1", "2", "3"]
    model = MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg.resize[0],
        max_size=cfg.resize[1],
        image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(c, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_test,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_train,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_test,
        rpn_batch_size_per_image=cfg.rpn_batch_per_image,
        box_roi_pool=MultiScaleRoIAlign(features, cfg.box_pool, sampling_ratio=2),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(cfg.fc_channels, num_classes),
        box_batch_size_per_image=cfg.box_batch_per_image,
        box_detections_per_img=cfg.detections_per_image,
        mask_roi_pool=MultiScaleRoIAlign(features, cfg.mask_pool, sampling_ratio=2),
        mask_head=MaskRCNNHeads(c, [cfg.head_channels] * 4, 1, norm_layer=head_norm),
        mask_predictor=MaskRCNNPredictor(cfg.head_channels, cfg.head_channels, num_classes),
    )
    if parse_norm_spec(cfg.head_norm).norm_act:
        _drop_relu_after_norm_act(model.roi_heads.box_head)
        _drop_relu_after_norm_act(model.roi_heads.mask_head)
    return model


def optimizer_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float) -> list[dict]:
    """Parameter groups: ``norm_weight_decay`` on every norm's gamma and beta, ``weight_decay`` on the rest.

    Frozen parameters (requires_grad False) are left out.
    """
    norm_types = (nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    norm_params, other = [], []
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (norm_params if isinstance(module, norm_types) else other).append(param)
    groups = [{"params": other, "weight_decay": weight_decay}]
    if norm_params:
        groups.append({"params": norm_params, "weight_decay": norm_weight_decay})
    return groups
