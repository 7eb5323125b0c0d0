"""The paper's numbers (Wu & He 2018; ../shared/reference/paper-results.md), to print beside ours."""

from __future__ import annotations

SOURCE = "Wu & He, Group Normalization, ECCV 2018 (ImageNet, ResNet-50, 8 GPUs)"

# Table 1: val error (%) at 32 images per GPU.
TABLE1 = {"bn": 23.6, "ln": 25.3, "in": 28.4, "gn": 24.1}
TABLE1_TRAIN_NOTE = "GN has lower training error than BN (Fig. 4); its val gap is put down to BN's regularising noise."

# Table 2 / Fig. 1: val error (%) against images per GPU.
TABLE2 = {
    "bn": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
    "gn": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1},
}

# Sec. 4.1 text: Batch Renorm at 4 images per GPU (ImageNet ResNet-50 val error, %), beside BN and GN there.
BATCH_RENORM_AT_4 = {"brn": 26.3, "bn": 27.3, "gn": 24.2}

# Table 3: group division at 32 images per GPU.
TABLE3_GROUPS = {64: 24.6, 32: 24.1, 16: 24.6, 8: 24.4, 4: 24.6, 2: 24.7, 1: 25.3}
TABLE3_CHANNELS = {64: 24.4, 32: 24.5, 16: 24.2, 8: 24.3, 4: 24.8, 2: 25.6, 1: 28.4}

# Fig. 6: VGG-16 val error (%) without norm, with BN, with GN.
VGG_ERRORS = {"none": 29.2, "bn": 28.0, "gn": 27.6}

# Small-scale reproductions to expect on small data.
CIFAR10_REPRO = {
    "source": "CIFAR-10, ResNet-20-style, G=8, 100 epochs, 5 seeds (public reproduction)",
    "bn": {32: 13.6, 16: 13.6, 8: 13.9, 4: 15.2, 2: 19.7},
    "gn": {32: 14.1, 16: 14.3, 8: 14.2, 4: 14.0, 2: 14.2},
}

# COCO, Mask R-CNN (Sec. 6.1, Tables 4-7): (box AP, mask AP); None where the paper gives none.
COCO_SOURCE = "Wu & He 2018, Tables 4-7: Mask R-CNN on COCO 2017 val, 8 GPUs x 2 images, ImageNet-pre-trained backbones"
COCO_FPN = {  # R50-FPN, 1x schedule (Table 5), and from scratch (Table 7, longer schedule)
    "bn*-plain": (38.6, 34.2),  # BN* backbone, no norm in the heads
    "bn*": (39.5, 34.4),  # BN* backbone, GN 4conv1fc box head and GN mask head
    "gn": (40.0, 34.8),  # GN backbone and GN heads
    "gn-scratch": (39.5, 35.2),  # from scratch, GN, long schedule (Table 7)
    "syncbn-scratch": (34.5, None),  # from scratch, SyncBN (reported elsewhere, quoted in Table 7)
}
COCO_C4 = {"bn*": (37.7, 32.8), "gn": (38.8, 33.6)}  # Table 4: R50-C4
COCO_TABLE6 = {"bn*": (38.6, 34.5), "gn": (40.3, 35.7), "gn-long": (40.8, 36.1)}  # R50-FPN, GN vs BN*
COCO_BN_FINETUNE_DROP = 6.0  # fine-tuning BN at 1-2 images/GPU: about 6 AP below BN* (box)
COCO_BN_HEAD_DROP = 9.0  # BN in the box head: about 9 AP below

TABLE8_SOURCE = "Wu & He 2018, Table 8: Kinetics-400, ResNet-50 I3D, 8 GPUs, normalising over (T, H, W)"
# (clip length, clips per GPU) -> norm -> (top-1, top-5) accuracy, %.
TABLE8: dict[tuple[int, int], dict[str, tuple[float, float]]] = {
    (32, 8): {"bn": (73.3, 90.7), "gn": (73.0, 90.6)},
    (32, 4): {"bn": (72.1, 90.0), "gn": (72.8, 90.6)},
    (64, 4): {"bn": (73.3, 90.8), "gn": (74.5, 91.7)},
}
TABLE8_COLUMNS = list(TABLE8)  # Table 8's order: short clips at 8 and 4 per GPU, long clips at 4
