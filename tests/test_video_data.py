"""Video clips: Moving Fashion-MNIST (no single frame decides the label), a folder of clips, clips in the loader."""

import json

import numpy as np
import pytest
import torch

from groupnorm.data import LOADERS, MemoryLoader, load_fashion_mnist, load_image_data
from groupnorm.data.clips import (
    MovingFashion,
    clip_dataset_name,
    clip_parameters,
    generate_clips,
    load_clip_folder,
    load_moving_fashion,
    same_frame_other_class,
    split_dataset_name,
)
from groupnorm.data.loader import Augment

RECIPE = MovingFashion()


@pytest.fixture(scope="module")
def garments():
    return load_fashion_mnist("test")[0][:500]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUPNORM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_every_frame_of_a_clip_is_the_same_frame_of_a_clip_of_every_other_class(garments):
    """By construction: frame t of any clip is, bit for bit, frame t of a clip of each other class (same garment,
    same shake, another start), so no single frame can decide the label."""
    params = clip_parameters(RECIPE, 24, len(garments), seed=3)
    clips = generate_clips(RECIPE, garments, params, frames=8)
    for i in range(len(clips)):
        frame = (i * 5) % 8
        for label in range(RECIPE.num_classes):
            other = same_frame_other_class(params, i, frame, label, RECIPE)
            witness = generate_clips(RECIPE, garments, other, frames=8)[0]
            assert other.labels.item() == label
            assert torch.equal(witness[0, frame], clips[i, 0, frame]), (i, frame, label)
            if label != params.labels[i].item():
                assert not torch.equal(witness, clips[i]), "another class must move differently"


def _ridge_accuracy(train_x, train_y, test_x, test_y, classes, lam=10.0):
    """A linear probe (one-vs-all ridge regression on standardised features)."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    a, b = torch.cat([a, torch.ones(len(a), 1)], 1), torch.cat([b, torch.ones(len(b), 1)], 1)
    targets = torch.nn.functional.one_hot(train_y, classes).double()
    w = torch.linalg.solve(a.T @ a + lam * torch.eye(a.shape[1], dtype=a.dtype), a.T @ targets)
    return ((b @ w).argmax(1) == test_y).double().mean().item()


def _displacement(first, last):
    """(dy, dx) from first to last frame by circular cross-correlation (the canvas is a torus)."""
    f1, f2 = torch.fft.fft2(first.double()), torch.fft.fft2(last.double())
    corr = torch.fft.ifft2(f2 * f1.conj()).real
    s = first.shape[-1]
    peak = corr.flatten(1).argmax(1)
    dy, dx = peak // s, peak % s
    return torch.stack([(dy + s // 2) % s - s // 2, (dx + s // 2) % s - s // 2], 1).double()


def test_a_single_frame_probe_is_at_chance_while_the_motion_gives_the_label_away(garments):
    """Statistical check of the construction, with a positive control for the probe (a leaky variant)."""
    n, frames, classes = 3200, 8, RECIPE.num_classes
    params = clip_parameters(RECIPE, n, len(garments), seed=5)
    clips = generate_clips(RECIPE, garments, params, frames=frames)[:, 0].double()
    y = params.labels
    split = 2400
    for t in (0, frames - 1):
        x = clips[:, t].flatten(1)
        acc = _ridge_accuracy(x[:split], y[:split], x[split:], y[split:], classes)
        assert acc < 1 / classes + 0.05, f"a single frame ({t}) gives the label away: {acc:.3f}"
    # The probe sees a leak when there is one: the same clips with a start position tied to the class.
    leaky = clip_parameters(RECIPE, n, len(garments), seed=5)
    leaky_start = (leaky.labels[:, None] * 6) % (RECIPE.size * RECIPE.subpixel)
    leaky = type(leaky)(leaky.items, leaky.labels, leaky_start.expand(-1, 2).clone(), leaky.shake)
    x = generate_clips(RECIPE, garments, leaky, frames=1)[:, 0, 0].double().flatten(1)
    assert _ridge_accuracy(x[:split], y[:split], x[split:], y[split:], classes) > 5 / classes
    # Two frames tell the motion: the displacement from the first to the last frame names the class.
    d = _displacement(clips[:, 0], clips[:, -1]) * RECIPE.subpixel / (frames - 1)
    predicted = torch.cdist(d, RECIPE.velocities().double()).argmin(1)
    assert (predicted == y).double().mean().item() > 0.5  # 66% here; 29% from 4 frames, 9% from 2


def test_short_clips_are_the_first_frames_of_the_long_ones(garments):
    params = clip_parameters(RECIPE, 16, len(garments), seed=1)
    long_ = generate_clips(RECIPE, garments, params, frames=16)
    short = generate_clips(RECIPE, garments, params, frames=4)
    assert torch.equal(short, long_[:, :, :4])
    assert long_.dtype == torch.uint8 and long_.shape == (16, 1, 16, RECIPE.size, RECIPE.size)
    assert torch.bincount(clip_parameters(RECIPE, 160, 500, seed=0).labels).tolist() == [5] * 32


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"size": 0}, "size must be a positive int"),
        ({"item_size": 24}, "item_size must be below"),
        ({"speeds": (2, 2)}, "speeds must be distinct"),
        ({"jitter": -1}, "jitter must be >= 0"),
    ],
)
def test_recipe_rejects_bad_values(kw, words):
    with pytest.raises(ValueError, match=words):
        MovingFashion(**kw)


def test_generated_clips_are_cached_once_and_reused(cache, monkeypatch):
    recipe = MovingFashion(train_clips=64, val_clips=32)
    tr, trl, va, _ = load_moving_fashion(4, recipe)
    files = list((cache / "clips").glob("moving-fashion-t4-*.pt"))
    assert len(files) == 1 and tr.shape == (64, 1, 4, 24, 24) and va.shape == (32, 1, 4, 24, 24)
    import groupnorm.data.clips as clips_module

    monkeypatch.setattr(clips_module, "generate_clips", lambda *a, **k: pytest.fail("regenerated"))
    tr2, trl2, _, _ = load_moving_fashion(4, recipe)
    assert torch.equal(tr, tr2) and torch.equal(trl, trl2)
    files[0].write_bytes(b"not a tensor file")  # a corrupt cache is regenerated, not trusted
    monkeypatch.undo()
    monkeypatch.setenv("GROUPNORM_CACHE", str(cache))
    assert torch.equal(load_moving_fashion(4, recipe)[0], tr)


def test_clip_datasets_are_registered_with_the_engine():
    assert "moving-fashion-t8" in LOADERS and "clips-t16" in LOADERS
    assert LOADERS["moving-fashion-t8"][1:] == (1, 32)
    assert split_dataset_name("moving-fashion-t16") == ("moving-fashion", 16)
    assert clip_dataset_name("clips", 8) == "clips-t8"
    with pytest.raises(ValueError, match="clip length must be one of"):
        clip_dataset_name("moving-fashion", 7)
    with pytest.raises(ValueError, match="not a clip dataset"):
        split_dataset_name("fashion-mnist")


def test_memory_loader_serves_clips_with_one_crop_per_clip_and_no_flip():
    clips = torch.randint(0, 256, (8, 1, 4, 12, 12), dtype=torch.uint8)
    loader = MemoryLoader(
        clips, torch.arange(8), 4, mean=(0.5,), std=(0.25,), train=True, augment=Augment(pad=2), channels_last=True
    )
    x, y = next(loader.epoch(0))
    assert x.shape == (4, 1, 4, 12, 12) and x.is_contiguous(memory_format=torch.channels_last_3d)
    for i in range(4):  # every frame of a clip is shifted alike: frame t of the batch is frame t of the source
        source = clips[y[i]].float() / 255
        restored = x[i] * 0.25 + 0.5
        shifts = {
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.allclose(
                restored[0, :, 2:-2, 2:-2], torch.roll(source[0], (dy, dx), (-2, -1))[:, 2:-2, 2:-2], atol=1e-5
            )
        }
        assert len(shifts) == 1


# ---------------------------------------------------------------------------------------
# a folder of clips


def _write_png_frames(directory, frames):
    from PIL import Image

    directory.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f.permute(1, 2, 0).squeeze(-1).numpy()).save(directory / f"{i:03d}.png")


def _make_folder(root, rgb=False):
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 2)):
        for c, cls in enumerate(("left", "right")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(count):
                length = 6 + i  # clips of different lengths
                np.save(d / f"clip{i}.npy", rng.integers(0, 256, (length, 10, 14), dtype=np.uint8))
            frames = torch.full((5, 3 if rgb else 1, 10, 14), 40 * (c + 1), dtype=torch.uint8)
            _write_png_frames(d / "frames", frames)
    return root


def test_clip_folder_of_npy_files_and_frame_folders(tmp_path, cache):
    root = _make_folder(tmp_path / "clips", rgb=True)
    tr, trl, va, _, classes = load_clip_folder(root, 4, size=8, stride=1)
    assert classes == ("left", "right")
    assert tr.shape == (8, 3, 4, 8, 8) and va.shape == (6, 3, 4, 8, 8) and tr.dtype == torch.uint8
    assert sorted(trl.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    frames_clip = tr[trl == 1][-1]  # the png clip of class 'right' (sorted: clip0..2, frames)
    assert int(frames_clip.float().mean().round()) == 80
    # through the engine: clips-t4 with data_dir, options from clips.json; converted once into the cache
    (root / "clips.json").write_text(json.dumps({"size": 8}))
    data = load_image_data("clips-t4", 0, 0, str(root))
    assert data.train_images.shape == (8, 3, 4, 8, 8) and data.num_classes == 2 and data.in_channels == 3
    assert not data.augment.flip
    assert len(list((cache / "clips").glob("folder-*.pt"))) == 1  # the same options: converted once, reused


def test_clip_folder_samples_the_middle_and_loops_short_clips(tmp_path, cache):
    root = tmp_path / "c"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        clip = np.arange(6, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), dtype=np.uint8)
        np.save(root / split / "a" / "x.npy", clip)
    tr = load_clip_folder(root, 2, stride=2)[0]
    assert tr[0, 0, :, 0, 0].tolist() == [1, 3]  # frames 1 and 3 of 0..5: the middle
    tr = load_clip_folder(root, 8)[0]
    assert tr[0, 0, :, 0, 0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1]  # looped
    floats = np.linspace(0, 1, 4 * 16, dtype=np.float32).reshape(4, 4, 4)
    np.save(root / "train" / "a" / "x.npy", floats)
    assert load_clip_folder(root, 4)[0].max().item() == 255


@pytest.mark.parametrize(
    ("setup", "error", "words"),
    [
        ("missing", FileNotFoundError, "does not exist"),
        ("no_val", FileNotFoundError, "no val/ directory"),
        ("stray", ValueError, "val/ has classes that train/ lacks: other"),
        ("bad_npy", ValueError, "not a readable .npy"),
        ("bad_shape", ValueError, r"expected an array \(T, H, W\)"),
        ("sizes", ValueError, "clips of different sizes"),
        ("bad_json", ValueError, "expected an object with keys size, stride"),
    ],
)
def test_clip_folder_errors_name_the_problem(tmp_path, cache, setup, error, words):
    root = tmp_path / "c"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        np.save(root / split / "a" / "x.npy", np.zeros((4, 6, 6), dtype=np.uint8))
    if setup == "missing":
        root = tmp_path / "nowhere"
    elif setup == "no_val":
        import shutil

        shutil.rmtree(root / "val")
    elif setup == "stray":
        (root / "val" / "other").mkdir()
        np.save(root / "val" / "other" / "y.npy", np.zeros((4, 6, 6), dtype=np.uint8))
    elif setup == "bad_npy":
        (root / "train" / "a" / "y.npy").write_bytes(b"garbage")
    elif setup == "bad_shape":
        np.save(root / "train" / "a" / "y.npy", np.zeros((4, 6), dtype=np.uint8))
    elif setup == "sizes":
        np.save(root / "train" / "a" / "y.npy", np.zeros((4, 8, 8), dtype=np.uint8))
    elif setup == "bad_json":
        (root / "clips.json").write_text(json.dumps({"frames": 3}))
    with pytest.raises(error, match=words):
        if setup == "bad_json":
            LOADERS["clips-t4"][0](str(root))
        else:
            load_clip_folder(root, 4)


def test_clip_folder_dataset_needs_data_dir():
    with pytest.raises(ValueError, match="clips-t8 needs data_dir"):
        LOADERS["clips-t8"][0](None)
