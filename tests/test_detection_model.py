"""Mask R-CNN from a norm spec: where the norms go, pre-trained backbones, frozen layers, the config's checks."""

import json

import pytest
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead

from groupnorm.models import build_model
from groupnorm.models.maskrcnn import build_mask_rcnn, load_backbone_weights, optimizer_groups
from groupnorm.nn import BatchNorm, FrozenBatchNorm, GroupNorm
from groupnorm.train import DetectionConfig, check_configs, lr_at
from groupnorm.train.records import save_checkpoint

TINY = {
    "scene_size": 64,
    "width": 8,
    "backbone_norm": "gn:4",
    "fpn_channels": 16,
    "head_channels": 16,
    "fc_channels": 32,
    "fpn_norm": "gn:4",
    "head_norm": "gn:4",
    "trainable_layers": 5,
    "devices": 2,
}


def tiny(**kw) -> DetectionConfig:
    return DetectionConfig(**{**TINY, **kw})


def _norms(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


def test_gn_model_has_gn_in_backbone_fpn_and_heads():
    model = build_mask_rcnn(tiny(backbone_norm="gn:4"), 11)
    assert isinstance(model, MaskRCNN)
    body, fpn = model.backbone.body, model.backbone.fpn
    assert _norms(body, GroupNorm) and not _norms(body, nn.modules.batchnorm._BatchNorm)
    assert all(m.num_groups == 4 for m in _norms(body, GroupNorm))
    assert len(_norms(fpn, GroupNorm)) == 8  # 4 lateral 1x1 + 4 output 3x3 convs, each with GN
    box_head = model.roi_heads.box_head
    assert isinstance(box_head, FastRCNNConvFCHead)
    assert len(_norms(box_head, nn.Conv2d)) == 4 and len(_norms(box_head, GroupNorm)) == 4
    assert len(_norms(box_head, nn.Linear)) == 1  # 4conv1fc
    assert len(_norms(model.roi_heads.mask_head, GroupNorm)) == 4
    assert not _norms(model.rpn, GroupNorm)  # the RPN head has no norm, as in the paper
    assert all(c.bias is None for c in _norms(box_head, nn.Conv2d))  # a conv before a norm has no bias


def test_bn_star_is_frozen_and_bn_has_per_device_statistics():
    star = build_mask_rcnn(tiny(backbone_norm="bn:frozen", init="x.pt"), 11)
    frozen = _norms(star.backbone.body, FrozenBatchNorm)
    assert frozen and not any(p.requires_grad for m in frozen for p in m.parameters())
    bn = build_mask_rcnn(tiny(backbone_norm="bn"), 11, devices=4)
    assert all(m.devices == 4 for m in _norms(bn.backbone.body, BatchNorm))


def test_plain_heads_have_no_norm():
    model = build_mask_rcnn(tiny(head="2fc", head_norm="none", fpn_norm="none", backbone_norm="bn"), 11)
    assert isinstance(model.roi_heads.box_head, TwoMLPHead)
    heads = nn.ModuleList([model.backbone.fpn, model.roi_heads.box_head, model.roi_heads.mask_head])
    assert not _norms(heads, GroupNorm)
    assert all(c.bias is not None for c in _norms(heads, nn.Conv2d))


def test_trainable_layers_freeze_the_stem_and_first_stages():
    model = build_mask_rcnn(tiny(init="x.pt", trainable_layers=3, backbone_norm="gn:4"), 11)
    grads = {n: p.requires_grad for n, p in model.backbone.body.named_parameters()}
    assert not any(v for n, v in grads.items() if n.startswith(("conv1", "bn1", "layer1")))
    assert all(v for n, v in grads.items() if n.startswith(("layer2", "layer3", "layer4")))


def test_a_grey_classifier_checkpoint_loads_into_the_rgb_backbone(tmp_path):
    """The stem is adapted so that a grey image gives the classifier's features exactly."""
    for norm in ("bn", "gn:4"):
        clf = build_model("tvresnet", norm=norm, num_classes=10, in_channels=1, depth=10, width=8)
        with torch.no_grad():
            for p in clf.parameters():
                p.add_(torch.randn_like(p) * 0.1)
            for m in _norms(clf, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        det_norm = "bn:frozen" if norm == "bn" else norm
        model = build_mask_rcnn(tiny(backbone_norm=det_norm, init="clf.pt"), 11)
        load_backbone_weights(model.backbone.body, clf.state_dict())
        grey = torch.rand(2, 1, 64, 64)
        clf.eval()
        model.eval()
        torch.testing.assert_close(model.backbone.body(grey.repeat(1, 3, 1, 1))["3"], clf.features(grey))


def test_checkpoints_of_another_norm_or_shape_are_rejected(tmp_path):
    bn = build_model("tvresnet", norm="bn", num_classes=10, in_channels=1, depth=10, width=8).state_dict()
    gn_body = build_model("tvresnet", norm="gn:4", num_classes=10, in_channels=3, depth=10, width=8)
    with pytest.raises(ValueError, match="same norm"):
        load_backbone_weights(gn_body, bn)
    wide = build_model("tvresnet", norm="bn", num_classes=10, in_channels=3, depth=10, width=16)
    with pytest.raises(ValueError, match="shapes differ"):
        load_backbone_weights(wide, bn)


def test_no_weight_decay_on_gamma_and_beta():
    model = build_mask_rcnn(tiny(backbone_norm="gn:4"), 11)
    decay, no_decay = optimizer_groups(model, 1e-4, 0.0)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    norm_params = {id(p) for m in model.modules() if isinstance(m, nn.GroupNorm) for p in m.parameters()}
    assert {id(p) for p in no_decay["params"]} == norm_params
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)


def test_lr_follows_every_tasks_rule_and_steps_down_at_the_milestones():
    cfg = tiny(epochs=9, warmup_epochs=1.0, images_per_device=4, devices=4)
    assert cfg.lr == pytest.approx(0.02 * 4 / 2)  # base_lr x images per device / reference (2)
    assert lr_at(cfg, 0.0) == pytest.approx(cfg.lr / 10)  # the one warm-up rule: from lr/10
    assert lr_at(cfg, 1.0) == pytest.approx(cfg.lr)
    assert lr_at(cfg, 6.0) == pytest.approx(cfg.lr / 10)  # 2/3 of 9 epochs
    assert lr_at(cfg, 8.5) == pytest.approx(cfg.lr / 100)  # 8/9


def test_run_id_hashes_what_changes_results_only():
    a = tiny()
    assert a.id == tiny(threads=1, data_dir="/elsewhere", checkpoint_seconds=1.0, eval_batch=2).id
    assert a.id != tiny(seed=1).id != tiny(backbone_norm="gn:4").id
    assert a.id.startswith("scenes64_r10w8_gn4_scratch_4conv1fc-gn4_b2_s0_")
    assert tiny(backbone_norm="bn:frozen", init="x.pt").id.startswith("scenes64_r10w8_bnfrozen_pre_")
    target = tiny(backbone_norm="bn:frozen", init="x.pt", backbone_stats="target")
    assert target.id.startswith("scenes64_r10w8_bnfrozen-target_pre_")
    assert "backbone_stats" not in tiny(backbone_norm="bn:frozen", init="x.pt").hashed_fields()  # old ids stay
    assert json.loads(json.dumps(a.to_dict()))["scene_items"] == [2, 4]


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"head": "mlp"}, "head must be one of 2fc, 4conv1fc"),
        ({"head_norm": "bn"}, "BN with batch statistics is not supported after the backbone"),
        ({"fpn_norm": "ws+gn"}, "ws+ applies to the backbone only"),
        ({"backbone_norm": "gx"}, "backbone_norm: norm spec: cannot parse 'gx'"),
        ({"trainable_layers": 6}, "trainable_layers must be in 0..5"),
        ({"trainable_layers": 3}, "from scratch trains every layer"),
        ({"backbone_norm": "bn:frozen", "init": ""}, "bn:frozen"),
        ({"backbone_stats": "target"}, "backbone_stats='target' re-estimates BN\\*'s frozen statistics"),
        ({"backbone_stats": "scenes"}, "backbone_stats must be one of pretrained, target"),
        ({"dataset": "coco"}, "dataset coco needs data_dir"),
        ({"images_per_device": 0}, "images_per_device must be a positive int"),
        ({"milestones": (0.9, 0.5)}, "milestones must be increasing"),
        ({"backbone": "resnet50"}, "resnet50 has depth 50, width 64"),
        ({"scene_scales": (0.5, 3.0)}, "does not fit an image of 64"),
    ],
)
def test_bad_configs_are_rejected_before_training(kw, words):
    with pytest.raises(ValueError, match=words.replace("+", r"\+").replace("(", r"\(").replace(")", r"\)")):
        tiny(**kw)


def test_check_rejects_indivisible_norms_and_missing_or_unfinished_pretraining(tmp_path):
    with pytest.raises(ValueError, match="does not apply to 16 channels"):
        check_configs([tiny(backbone_norm="gn:4", head_norm="gn:3")], tmp_path)
    cfg = tiny(backbone_norm="bn:frozen", init="pre/run/checkpoint.pt", trainable_layers=3)
    assert DetectionConfig().backbone_norm == "gn"  # the defaults are a valid config: GN from scratch
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        check_configs([cfg], tmp_path)
    run = tmp_path / "pre" / "run"
    run.mkdir(parents=True)
    bn = build_model("tvresnet", norm="bn", num_classes=10, in_channels=1, depth=10, width=8)
    save_checkpoint(run / "checkpoint.pt", {"model": bn.state_dict()})
    (run / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="has not finished"):
        check_configs([cfg], tmp_path)
    (run / "result.json").write_text("{}")
    check_configs([cfg], tmp_path)


def test_torchvision_imagenet_style_weights_load_and_replace_pretraining(tmp_path):
    """A torchvision ResNet-50 state dict (what its ImageNet .pth holds) is a BN checkpoint for the paper preset."""
    import torchvision

    from groupnorm.experiments import detection as experiment

    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    body = build_model("resnet50", norm="bn:frozen", num_classes=1, in_channels=3)
    state = torch.load(path, weights_only=True)
    assert load_backbone_weights(body, state) == ["fc.weight", "fc.bias"]  # all but the classifier
    preset = experiment.Preset(variants=("bn*", "bn", "gn"), bn_checkpoint=str(path), seeds=(0,))
    assert [c.norm for c in experiment.pretrain_configs(preset)] == [preset.backbone_gn]  # BN is not pre-trained
    by_variant = {c.variant: c.init for c in experiment.configs(preset)}
    assert by_variant["bn*"] == by_variant["bn"] == str(path)
    assert by_variant["gn"].startswith("detection/pretrain/")
    with pytest.raises(FileNotFoundError, match="gn_checkpoint not found"):
        experiment.configs(experiment.Preset(gn_checkpoint=str(tmp_path / "nope.pt")))


def test_every_preset_builds(tmp_path):
    """The structural check (each model on the meta device) passes for every preset, the paper's included."""
    from groupnorm.experiments import detection as experiment
    from groupnorm.train.overrides import apply_overrides

    coco = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        (coco / split).mkdir(parents=True)
        (coco / "annotations").mkdir(exist_ok=True)
        (coco / "annotations" / f"instances_{split}.json").write_text("{}")
    for name, preset in experiment.PRESETS.items():
        if name == "paper":
            preset = apply_overrides(preset, [f"data_dir={coco}", f"pretrain_data_dir={tmp_path}"])
        cfgs = experiment.configs(preset)
        assert len(cfgs) == len(preset.variants) * len(preset.seeds)
        check_configs(cfgs, tmp_path, check_init=False)
