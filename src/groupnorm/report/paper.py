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
