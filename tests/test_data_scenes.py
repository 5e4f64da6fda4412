"""Tests for sslx.data: the procedural scenes benchmark, its DataModule and the image-folder reader."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslx.data.datamodule import ImageFolderDataModule, ImageFolderDataset, ScenesDataModule, stratified_split
from sslx.data.scenes import (SCENE_CLASSES, SHAPES, ScenesDataset, collate_scenes, pair_class, render_scene,
                              sample_scene)
from sslx.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize

K = len(SCENE_CLASSES)


# ---------------------------------------------------------------- shapes
def _unit_grid(n: int = 1201) -> tuple[np.ndarray, np.ndarray, float]:
    g = np.linspace(-1.2, 1.2, n, dtype=np.float32)
    u, v = np.meshgrid(g, g)
    return u, v, float(g[1] - g[0]) ** 2


def test_shape_areas_match_their_geometry():
    u, v, px = _unit_grid()
    s36 = math.sin(math.radians(36))
    expected = {
        "house": 1.2 * 0.8 + 0.5 * 1.2 * 0.7,
        "triangle": 0.5 * 1.1 * 1.6,
        "star": 10 * 0.5 * 0.95 * 0.4 * s36,
        "latin_cross": 0.4 * 1.75 + 2 * 0.45 * 0.4,
        "horseshoe": math.pi * (0.88 ** 2 - 0.5 ** 2) - 0.6 * (0.88 - 0.5) * 0.985,
        "trapezoid": 0.5 * (1.6 + 0.7) * 1.05,
        "arrow": 1.05 * 0.4 + 0.5 * 1.1 * 0.75,
        "dome": 0.5 * math.pi * 0.85 ** 2,
        "l_shape": 0.45 * 1.4 + 0.85 * 0.45,
    }
    for name, area in expected.items():
        measured = SHAPES[name](u, v).sum() * px
        assert measured == pytest.approx(area, rel=0.01), name


def test_shapes_fit_the_unit_disc_and_differ_from_each_other():
    u, v, px = _unit_grid(601)
    masks = {name: fn(u, v) for name, fn in SHAPES.items()}
    assert len(masks) >= 10
    for name, m in masks.items():
        assert m.sum() * px > 0.8, name  # not degenerate
        assert np.hypot(u[m], v[m]).max() <= 1.0, name
    for (a, ma), (b, mb) in itertools.combinations(masks.items(), 2):
        assert (ma & mb).sum() / (ma | mb).sum() < 0.9, (a, b)


def test_no_shape_maps_onto_itself_under_a_quarter_turn():
    """Upright shapes without 90°/180°/270° symmetry: the rotation of a scene is identifiable (RotNet)."""
    u, v, _ = _unit_grid(601)
    for name, fn in SHAPES.items():
        m = fn(u, v)
        for k in (1, 2, 3):
            turned = np.rot90(m, k)
            assert (m & turned).sum() / (m | turned).sum() < 0.85, (name, k)


def test_objects_stand_upright_and_redraws_keep_only_their_geometry():
    from sslx.data.scenes import MAX_TILT, redraw_scene

    ds = ScenesDataset("train", objects="pair", size=48)
    for i in range(48):
        spec = ds.scene(i)
        view = redraw_scene(spec, np.random.default_rng(i))
        for a, b in zip(spec.objects, view.objects):
            assert abs(a.angle) <= MAX_TILT
            assert (a.class_id, a.radius, a.angle, a.aspect) == (b.class_id, b.radius, b.angle, b.aspect)
        assert [o.center for o in spec.objects] != [o.center for o in view.objects]
        assert spec.background.base != view.background.base
        rendered = render_scene(view, 64)
        assert set(np.unique(rendered.instance)) == {0, 1, 2}
    with pytest.raises(TypeError, match="SceneSpec"):
        redraw_scene("scene", np.random.default_rng(0))


# ---------------------------------------------------------------- determinism
def test_items_are_reproducible_per_index_and_distinct_across_index_split_seed():
    a = ScenesDataset("val", seed=3, objects="mixed")
    b = ScenesDataset("val", seed=3, objects="mixed")
    order = [5, 0, 3]
    items_b = {i: b[i] for i in order}  # other access order: each index has its own RNG
    for i in sorted(order):
        ia = a[i]
        for key in ("image", "mask", "instance", "labels", "object_labels"):
            assert torch.equal(ia[key], items_b[i][key]), (i, key)
        assert ia["label"] == items_b[i]["label"] and ia["index"] == i
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], ScenesDataset("test", seed=3, objects="mixed")[0]["image"])
    assert not torch.equal(a[0]["image"], ScenesDataset("val", seed=4, objects="mixed")[0]["image"])


def test_splits_never_share_an_image():
    digests = set()
    for split in ("train", "val", "test"):
        ds = ScenesDataset(split, size=20, resolution=32)
        digests.update(ds.render(i).image.tobytes() for i in range(20))
    assert len(digests) == 60


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize("objects", ["single", "pair"])
def test_mask_is_exactly_where_the_objects_change_the_image(objects):
    ds = ScenesDataset("train", size=24, objects=objects, seed=1)
    saw_occluder = saw_overlap = False
    for i in range(len(ds)):
        spec = ds.scene(i)
        full = render_scene(spec, ds.resolution)
        n = len(spec.objects)
        background = render_scene(spec, ds.resolution, drop=range(1, n + 1))
        changed = (full.image != background.image).any(axis=0)
        np.testing.assert_array_equal(changed, full.mask > 0, err_msg=f"scene {i}")
        assert background.mask.max() == 0 and background.instance.max() == 0
        lut = np.array([0] + [o.class_id + 1 for o in spec.objects])
        np.testing.assert_array_equal(full.mask, lut[full.instance])
        saw_occluder |= len(spec.occluders) > 0
        for k in range(1, n + 1):
            without_k = render_scene(spec, ds.resolution, drop=[k])
            changed_k = (full.image != without_k.image).any(axis=0)
            own = full.instance == k
            assert not (changed_k & ~own).any(), f"scene {i}: removing object {k} changed other pixels"
            # where nothing else lies under object k, removing it must reveal the background
            uncovered = own & (without_k.instance == 0)
            assert changed_k[uncovered].all()
            saw_overlap |= bool((own & (without_k.instance > 0)).any())
    assert saw_occluder
    assert saw_overlap or objects == "single"


def test_pair_scenes_hold_two_visible_objects_of_different_classes():
    ds = ScenesDataset("test", size=36, objects="pair", resolution=96)
    for i in range(len(ds)):
        item = ds[i]
        first, second = item["object_labels"].tolist()
        assert first != second and first == item["label"] == i % K
        assert item["labels"].sum() == 2 and item["labels"][first] == 1 and item["labels"][second] == 1
        for k, cls in ((1, first), (2, second)):
            region = item["instance"] == k
            assert region.float().mean() >= 0.01, f"scene {i}: object {k} covers {region.float().mean():.4f}"
            assert (item["mask"][region] == cls + 1).all()


def test_occlusion_is_partial():
    ds = ScenesDataset("train", size=240, objects="pair", resolution=64)
    visible = []
    for i in range(len(ds)):
        spec, full = ds.scene(i), ds.render(i)
        for k in (1, 2):
            alone = render_scene(spec, 64, drop=[3 - k])
            visible.append((full.instance == k).sum() / (alone.instance == k).sum())
    visible = np.array(visible)
    assert visible.min() >= 0.35
    assert (visible < 0.9).sum() >= 5  # overlaps do happen


def test_objects_contrast_with_the_background_everywhere():
    luma = np.array([0.299, 0.587, 0.114])[:, None, None]
    ds = ScenesDataset("val", size=24, objects="mixed", resolution=64)
    for i in range(len(ds)):
        spec = ds.scene(i)
        full, bg = ds.render(i), render_scene(spec, 64, drop=range(1, len(spec.objects) + 1))
        diff = np.abs(((full.image.astype(float) - bg.image.astype(float)) * luma).sum(0))
        # 0.12 luminance margin by construction, minus at most one quantisation step
        assert diff[full.mask > 0].min() >= 0.12 * 255 - 1


def test_single_scenes_have_one_object():
    item = ScenesDataset("val", size=3, objects="single")[2]
    assert item["object_labels"].tolist() == [2, -1]
    assert set(item["instance"].unique().tolist()) == {0, 1}
    assert item["labels"].sum() == 1


# ---------------------------------------------------------------- balance
def test_labels_are_balanced_and_pairs_cover_every_ordered_pair():
    ds = ScenesDataset("train", size=120, objects="pair", resolution=32)
    labels = [ds[i]["label"] for i in range(len(ds))]
    assert np.bincount(labels, minlength=K).tolist() == [10] * K
    pairs = [ScenesDataset("train", size=K * (K - 1), objects="pair").class_ids(i) for i in range(K * (K - 1))]
    assert sorted(pairs) == sorted(itertools.permutations(range(K), 2))
    assert pair_class(0, K) == 1 and pair_class(K, K) == 2 and pair_class(K - 1, K) == 0


def test_mixed_mode_draws_both_kinds_of_scene():
    ds = ScenesDataset("train", size=400, objects="mixed")
    n_pairs = sum(len(ds.class_ids(i)) == 2 for i in range(len(ds)))
    assert 150 < n_pairs < 250
    assert all(len(ScenesDataset("train", size=50, objects="mixed", pair_fraction=0.0).class_ids(i)) == 1
               for i in range(50))


def test_default_split_sizes_are_multiples_of_the_class_count():
    for split in ("train", "val", "test"):
        assert len(ScenesDataset(split)) % K == 0
    assert len(ScenesDataset("val", size=7)) == 7


# ---------------------------------------------------------------- appearance
def test_object_colour_does_not_predict_the_class():
    ds = ScenesDataset("train", size=288, objects="single", resolution=48, seed=2)
    feats, labels = [], []
    for i in range(len(ds)):
        r = ds.render(i)
        feats.append(r.image[:, r.instance == 1].mean(axis=1) / 255.0)
        labels.append(ds.class_ids(i)[0])
    x, y = np.array(feats), np.array(labels)
    train, test = slice(0, 144), slice(144, 288)
    centroids = np.stack([x[train][y[train] == c].mean(0) for c in range(K)])
    pred = np.argmin(((x[test][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == y[test]).mean() < 0.25  # chance is 1/12 ≈ 0.08


def test_background_is_textured_but_low_contrast():
    ds = ScenesDataset("val", size=8)
    for i in range(len(ds)):
        spec = ds.scene(i)
        bg = render_scene(spec, 128, drop=range(1, len(spec.objects) + 1)).image.astype(np.float64) / 255.0
        base = np.asarray(spec.background.base)[:, None, None]
        bound = spec.background.amplitude + 0.02 + 1 / 255
        assert np.abs(bg - base).max() <= bound
        assert bg.reshape(3, -1).std(axis=1).min() > 0.01


# ---------------------------------------------------------------- item format
def test_item_shapes_dtypes_and_normalisation_round_trip():
    ds = ScenesDataset("train", size=4)
    item = ds[1]
    assert set(item) == {"image", "label", "labels", "object_labels", "mask", "instance", "index"}
    assert item["image"].shape == (3, 128, 128) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (128, 128) and item["mask"].dtype == torch.int64
    assert item["instance"].dtype == torch.int64 and item["labels"].shape == (K,)
    assert isinstance(item["label"], int) and item["index"] == 1
    assert ds.mean == IMAGENET_MEAN and ds.std == IMAGENET_STD and ds.num_classes == K
    unit = ds.denormalize(item["image"])
    assert unit.min() >= 0 and unit.max() <= 1
    raw = torch.from_numpy(ds.render(1).image).double() / 255
    torch.testing.assert_close(unit.double(), raw, atol=1e-5, rtol=0)
    torch.testing.assert_close(ds.normalize(unit), item["image"], atol=1e-5, rtol=0)
    other = ScenesDataset("train", size=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))[1]["image"]
    torch.testing.assert_close(other * 0.25 + 0.5, unit, atol=1e-5, rtol=0)


def test_normalize_follows_input_dtype_and_batches():
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    y = normalize(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y[0, 1], (x[0, 1] - 0.456) / 0.224)
    torch.testing.assert_close(denormalize(y), x)
    with pytest.raises(ValueError, match="3 channels"):
        normalize(torch.rand(2, 1, 5, 5))
    with pytest.raises(TypeError, match="floating"):
        normalize(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_resolution_is_a_parameter_and_the_scene_is_resolution_free():
    small, large = ScenesDataset("test", size=3, resolution=64), ScenesDataset("test", size=3, resolution=128)
    for i in range(3):
        a, b = small[i], large[i]
        assert a["image"].shape == (3, 64, 64) and a["mask"].shape == (64, 64)
        assert abs((a["mask"] > 0).float().mean() - (b["mask"] > 0).float().mean()) < 0.03
        assert a["label"] == b["label"]


def test_collate_stacks_every_field():
    ds = ScenesDataset("val", size=4, resolution=32, objects="pair")
    batch = collate_scenes([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 32, 32) and batch["mask"].shape == (3, 32, 32)
    assert batch["label"].tolist() == [0, 1, 2] and batch["index"].dtype == torch.int64
    assert batch["labels"].shape == (3, K) and batch["object_labels"].shape == (3, 2)
    with pytest.raises(ValueError, match="empty"):
        collate_scenes([])


# ---------------------------------------------------------------- caching
def test_memory_and_disk_cache_return_the_same_items(tmp_path):
    plain = ScenesDataset("val", size=3, resolution=32)
    mem = ScenesDataset("val", size=3, resolution=32, cache="memory")
    disk = ScenesDataset("val", size=3, resolution=32, cache=tmp_path)
    for i in range(3):
        for other in (mem, disk, mem, disk):
            assert torch.equal(other[i]["image"], plain[i]["image"])
            assert torch.equal(other[i]["instance"], plain[i]["instance"])
    files = sorted(tmp_path.rglob("*.npz"))
    assert len(files) == 3 and not list(tmp_path.rglob("*.tmp"))
    reread = ScenesDataset("val", size=3, resolution=32, cache=tmp_path)
    assert torch.equal(reread[2]["mask"], plain[2]["mask"])


def test_corrupt_or_foreign_cache_files_are_rejected(tmp_path):
    ds = ScenesDataset("val", size=3, resolution=32, cache=tmp_path)
    ds[0]
    path = next(tmp_path.rglob("0000000.npz"))
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="0000000.npz.*corrupt"):
        ds[0]
    np.savez(path, image=np.zeros((3, 8, 8), np.uint8), mask=np.zeros((32, 32), np.uint8),
             instance=np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"image of shape \(3, 8, 8\)"):
        ds[0]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="afile"):
        ScenesDataset("val", cache=tmp_path / "afile")


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"split": "training"}, ValueError, "split"),
    ({"objects": "triple"}, ValueError, "objects"),
    ({"size": 0}, ValueError, "size"),
    ({"size": True}, TypeError, "size"),
    ({"seed": -1}, ValueError, "seed"),
    ({"resolution": 16}, ValueError, "resolution"),
    ({"resolution": 64.0}, TypeError, "resolution"),
    ({"mean": (0.5, 0.5)}, ValueError, "mean"),
    ({"std": (0.2, 0.0, 0.2)}, ValueError, "std"),
    ({"pair_fraction": 1.5}, ValueError, "pair_fraction"),
    ({"cache": 3}, TypeError, "cache"),
])
def test_bad_dataset_arguments_are_named(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        ScenesDataset(**kwargs)


def test_bad_indices_and_scene_requests_are_rejected():
    ds = ScenesDataset("val", size=5, resolution=32)
    with pytest.raises(IndexError, match="index 5 out of range"):
        ds[5]
    with pytest.raises(TypeError, match="index must be an int"):
        ds[1.0]
    assert ds[-1]["index"] == 4
    with pytest.raises(ValueError, match="two different classes"):
        sample_scene(np.random.default_rng(0), [3, 3])
    with pytest.raises(ValueError, match="resolution"):
        render_scene(ds.scene(0), resolution=8)
    with pytest.raises(ValueError, match="drop must hold instance ids among \\[1\\]"):
        render_scene(ds.scene(0), resolution=32, drop=[2])
    with pytest.raises(TypeError, match="SceneSpec"):
        render_scene({"objects": []})


# ---------------------------------------------------------------- ScenesDataModule
def test_scenes_datamodule_loaders():
    dm = ScenesDataModule(batch_size=4, objects="pair", sizes={"train": 8, "val": 4, "test": 6}, resolution=32)
    assert dm.num_classes == K and dm.classes == SCENE_CLASSES and dm.mean == IMAGENET_MEAN
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 32, 32)
    order = torch.cat([b["index"] for b in dm.train_dataloader()]).tolist()
    assert sorted(order) == list(range(8)) and order != list(range(8))
    again = ScenesDataModule(batch_size=4, objects="pair", sizes={"train": 8}, resolution=32)
    assert torch.cat([b["index"] for b in again.train_dataloader()]).tolist() == order
    assert [len(b["index"]) for b in dm.test_dataloader()] == [4, 2]
    assert torch.cat([b["index"] for b in dm.predict_dataloader()]).tolist() == list(range(6))
    assert len(dm.val_dataloader().dataset) == 4
    with pytest.raises(ValueError, match="unknown splits"):
        ScenesDataModule(sizes={"training": 3})
    with pytest.raises(ValueError, match="batch_size"):
        ScenesDataModule(batch_size=0)


# ---------------------------------------------------------------- ImageFolderDataModule
def _write_folder(root: Path, masks: Path | None = None) -> None:
    """Two classes × three images: solid colours (64×64) and a 64-wide, 80-tall image with a mask pattern."""
    for c, name in enumerate(("drop", "house")):
        (root / name).mkdir(parents=True)
        if masks is not None:
            (masks / name).mkdir(parents=True)
        for j in range(3):
            h = 80 if j == 2 else 64
            rgb = np.zeros((h, 64, 3), np.uint8)
            rgb[...] = (40 * (c + 1), 10 * j, 200)
            Image.fromarray(rgb).save(root / name / f"img{j}.png")
            if masks is not None:
                m = np.zeros((h, 64), np.uint8)
                m[np.arange(h) % 3 == 0, : 10 + j] = 255
                Image.fromarray(m).save(masks / name / f"img{j}.png")


def test_image_folder_datamodule_reads_images_labels_and_masks(tmp_path):
    _write_folder(tmp_path / "images", tmp_path / "masks")
    dm = ImageFolderDataModule(tmp_path / "images", tmp_path / "masks", resolution=64, resize=64,
                               val_fraction=1 / 3, batch_size=4)
    assert dm.classes == ("drop", "house") and dm.num_classes == 2
    batches = list(dm.test_dataloader())
    labels = torch.cat([b["label"] for b in batches]).tolist()
    assert labels == [0, 0, 0, 1, 1, 1]
    images = torch.cat([b["image"] for b in batches])
    masks = torch.cat([b["mask"] for b in batches])
    assert images.shape == (6, 3, 64, 64) and masks.shape == (6, 64, 64)
    expected_rgb = torch.tensor([40 * 2, 10 * 1, 200]) / 255.0  # class 1, image 1: a solid colour
    torch.testing.assert_close(denormalize(images[4]), expected_rgb.view(3, 1, 1).expand(3, 64, 64), atol=1e-5,
                               rtol=0)
    # the 64×80 image is centre-cropped by rows 8..71: mask rows with (row + 8) % 3 == 0 are set
    expected = np.zeros((64, 64), np.int64)
    expected[(np.arange(64) + 8) % 3 == 0, :12] = 2
    np.testing.assert_array_equal(masks[5].numpy(), expected)
    train = torch.cat([b["index"] for b in dm.train_dataloader()]).tolist()
    val = torch.cat([b["index"] for b in dm.val_dataloader()]).tolist()
    assert len(train) == 4 and len(val) == 2 and sorted(train + val) == list(range(6))
    assert sorted(labels[i] for i in val) == [0, 1]


def test_image_folder_resizes_and_crops(tmp_path):
    _write_folder(tmp_path / "images")
    ds = ImageFolderDataset(tmp_path / "images", resolution=24)
    assert ds.resize == 27  # the usual 256/224 ratio
    item = ds[0]
    assert item["image"].shape == (3, 24, 24) and "mask" not in item
    torch.testing.assert_close(ds.denormalize(item["image"])[:, 0, 0], torch.tensor([40, 0, 200]) / 255.0,
                               atol=2 / 255, rtol=0)


def test_stratified_split_keeps_one_training_image_per_class():
    train, val = stratified_split([0, 0, 0, 0, 1], 0.5, seed=0)
    assert sorted(train + val) == [0, 1, 2, 3, 4] and 4 in train and len(val) == 2


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderDataModule(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match="file.txt"):
        ImageFolderDataModule(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageFolderDataModule(tmp_path / "empty")
    (tmp_path / "noimg" / "cats").mkdir(parents=True)
    (tmp_path / "noimg" / "cats" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="cats.*contains no images"):
        ImageFolderDataModule(tmp_path / "noimg")
    _write_folder(tmp_path / "images", tmp_path / "masks")
    (tmp_path / "masks" / "house" / "img1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 6 images have no mask.*house.img1\.png"):
        ImageFolderDataModule(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(FileNotFoundError, match="masks folder"):
        ImageFolderDataModule(tmp_path / "images", tmp_path / "no_masks")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "house" / "img1.png")
    ds = ImageFolderDataset(tmp_path / "images", tmp_path / "masks", resolution=32)
    with pytest.raises(ValueError, match=r"img1\.png.*10×10 but its image"):
        ds[4]
    (tmp_path / "images" / "house" / "img0.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cannot read image .*img0\.png"):
        ds[3]
    with pytest.raises(ValueError, match="val_fraction"):
        ImageFolderDataModule(tmp_path / "images", val_fraction=1.0)
