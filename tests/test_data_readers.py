"""Real-dataset readers on tiny fixture files written in each dataset's own format."""
from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader

from fixtures_readers import (
    COLOURS,
    seg_entry,
    voc_entry,
    write_devkit_meta,
    write_flat_val,
    write_gtsegs_v5,
    write_gtsegs_v73,
    write_image_folder,
    write_voc_tree,
)
from sslx.data.imagenet import ImageNetVal
from sslx.data.imagenet_seg import ImageNetSegmentation
from sslx.data.voc import VOC_CLASSES, VOCSegmentation2012

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
IMAGENET_EVAL = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN.ravel(), STD.ravel())])
SEG_224 = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize(MEAN.ravel(), STD.ravel())])


def nearest_224(mask: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resize to 224×224 by its definition: output pixel centre → source pixel."""
    h, w = mask.shape
    rows = np.floor((np.arange(224) + 0.5) * h / 224).astype(int)
    cols = np.floor((np.arange(224) + 0.5) * w / 224).astype(int)
    return mask[rows][:, cols]


def interior(region: torch.Tensor, margin: int = 7) -> torch.Tensor:
    """Pixels whose whole (2·margin+1)² neighbourhood lies in `region` (far from bilinear blending)."""
    k = 2 * margin + 1
    return -F.max_pool2d(-region.float()[None, None], k, stride=1, padding=margin)[0, 0] > 0.5


def colour_at(image: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The [0,255] RGB values of a normalised 3×H×W image at the pixels `where` (3×n)."""
    return ((image * STD + MEAN) * 255)[:, where]


# ----------------------------------------------------------------------------- ImageNet val


def test_imagefolder_layout_labels_pixels_and_collate(tmp_path):
    expected = write_image_folder(tmp_path)
    ds = ImageNetVal(tmp_path)
    assert ds.layout == "imagefolder"
    assert ds.classes == ("n01000000", "n02000000") and ds.num_classes == 2 and len(ds) == 3
    for i, (path, label, colour) in enumerate(expected):
        item = ds[i]
        assert set(item) == {"image", "label", "labels", "index"}
        assert item["label"] == label and item["index"] == i
        assert item["labels"].tolist() == [float(label == 0), float(label == 1)]
        assert torch.equal(item["image"], IMAGENET_EVAL(Image.open(path).convert("RGB")))
        expect = (torch.tensor(colour).view(3, 1, 1) / 255 - MEAN) / STD  # PNG: the colour is exact
        assert item["image"].shape == (3, 224, 224)
        torch.testing.assert_close(item["image"], expect.expand(3, 224, 224), rtol=0, atol=1e-5)
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, 224, 224) and batch["labels"].shape == (3, 2)
    assert batch["label"].tolist() == [0, 1, 1]
    torch.testing.assert_close(ds.denormalize(batch["image"]), batch["image"] * STD + MEAN)


def test_flat_layout_with_ground_truth_ids_in_file_name_order(tmp_path):
    paths = write_flat_val(tmp_path / "val", [0, 0, 0])
    (tmp_path / "gt.txt").write_text("5\n0\n999\n")
    ds = ImageNetVal(tmp_path / "val", tmp_path / "gt.txt")
    assert ds.layout == "flat" and ds.num_classes == 1000 and len(ds) == 3
    assert [ds[i]["label"] for i in range(3)] == [5, 0, 999]
    item = ds[2]
    assert item["labels"].sum() == 1 and item["labels"][999] == 1
    assert torch.equal(item["image"], IMAGENET_EVAL(Image.open(paths[2]).convert("RGB")))
    centre = torch.ones(224, 224, dtype=torch.bool)
    assert (colour_at(item["image"], centre) - torch.tensor(COLOURS[2]).view(3, 1)).abs().max() < 4  # JPEG


def test_flat_layout_one_based_and_named_lines(tmp_path):
    write_flat_val(tmp_path, [0, 0, 0])
    (tmp_path / "gt1.txt").write_text("6\n1\n1000\n")
    with pytest.warns(UserWarning, match="devkit_meta"):
        ds = ImageNetVal(tmp_path, tmp_path / "gt1.txt", one_based=True)
    assert [label for _, label in ds.samples] == [5, 0, 999]
    (tmp_path / "val.txt").write_text(
        "ILSVRC2012_val_00000003.JPEG 7\nILSVRC2012_val_00000001.JPEG 3\nILSVRC2012_val_00000002.JPEG 0\n"
    )
    ds = ImageNetVal(tmp_path, tmp_path / "val.txt")
    assert [(p.name[-6:], label) for p, label in ds.samples] == [("1.JPEG", 3), ("2.JPEG", 0), ("3.JPEG", 7)]


def test_flat_layout_maps_devkit_ids_to_sorted_wnid_order(tmp_path):
    write_flat_val(tmp_path / "val", [0, 0, 0])
    synsets = [(1, "n02119789", 0), (2, "n01440764", 0), (3, "n09999999", 0), (4, "n00001740", 2)]
    write_devkit_meta(tmp_path / "meta.mat", synsets)
    (tmp_path / "gt.txt").write_text("1\n2\n3\n")
    ds = ImageNetVal(tmp_path / "val", tmp_path / "gt.txt", devkit_meta=tmp_path / "meta.mat")
    assert ds.classes == ("n01440764", "n02119789", "n09999999")  # the non-leaf synset 4 is dropped
    assert [label for _, label in ds.samples] == [1, 0, 2]
    assert ds[0]["labels"].tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="one_based=False contradicts devkit_meta"):
        ImageNetVal(tmp_path / "val", tmp_path / "gt.txt", one_based=False, devkit_meta=tmp_path / "meta.mat")
    (tmp_path / "gt_bad.txt").write_text("1\n2\n4\n")
    with pytest.raises(ValueError, match=r"ILSVRC2012_IDs \[4\] are not leaf classes"):
        ImageNetVal(tmp_path / "val", tmp_path / "gt_bad.txt", devkit_meta=tmp_path / "meta.mat")
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(tmp_path / "other.mat", {"x": np.zeros(3)})
    with pytest.raises(ValueError, match=r"no 'synsets' variable \(found \['x'\]\)"):
        ImageNetVal(tmp_path / "val", tmp_path / "gt.txt", devkit_meta=tmp_path / "other.mat")


def test_imagenet_val_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageNet val root not found: .*nowhere"):
        ImageNetVal(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty\b.*is empty"):
        ImageNetVal(tmp_path / "empty")
    flat = tmp_path / "flat"
    write_flat_val(flat, [0, 0, 0])
    with pytest.raises(ValueError, match="holds 3 images but no class subfolders.*labels_file"):
        ImageNetVal(flat)
    with pytest.raises(FileNotFoundError, match=r"labels file not found: .*missing\.txt"):
        ImageNetVal(flat, tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="only apply with labels_file"):
        ImageNetVal(flat, one_based=True)
    cases = {
        "short.txt": ("1\n2\n", r"has 2 labels but .* has 3 images"),
        "empty.txt": ("\n\n", "is empty"),
        "binary.txt": ("\udcff\udcfe", "is not a text file"),
        "mixed.txt": ("1\nILSVRC2012_val_00000002.JPEG 2\n3\n", "line 2: expected"),
        "word.txt": ("1\ntwo\n3\n", "line 2: label 'two' is not an integer"),
        "range.txt": ("1\n1000\n3\n", r"labels \[1000\] out of range for 1000 classes \(0-based"),
        "named_extra.txt": ("ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000002.JPEG 1\n"
                            "ILSVRC2012_val_00000003.JPEG 1\nILSVRC2012_val_00000009.JPEG 1\n",
                            r"names 1 images not in .*ILSVRC2012_val_00000009"),
        "named_short.txt": ("ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000002.JPEG 1\n",
                            r"has 2 labels but .* has 3 images; unlabelled: \['ILSVRC2012_val_00000003.JPEG'\]"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text, errors="surrogateescape")
        with pytest.raises(ValueError, match=message):
            ImageNetVal(flat, tmp_path / name)
    (tmp_path / "zero.txt").write_text("1\n0\n3\n")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"labels \[0\] out of range .*1-based"):
        ImageNetVal(flat, tmp_path / "zero.txt", one_based=True)
    (tmp_path / "ok.txt").write_text("1\n2\n3\n")
    with pytest.raises(ValueError, match=r"labels \[3\] out of range for 3 classes"):
        ImageNetVal(flat, tmp_path / "ok.txt", num_classes=3)
    (flat / "ILSVRC2012_val_00000002.JPEG").write_bytes(b"not a jpeg at all")
    ds = ImageNetVal(flat, tmp_path / "ok.txt")
    with pytest.raises(ValueError, match=r"cannot read image .*ILSVRC2012_val_00000002\.JPEG"):
        ds[1]
    with pytest.raises(IndexError, match="index 3 out of range for 3 images"):
        ds[3]
    folder = tmp_path / "folder"
    write_image_folder(folder)
    (folder / "n03000000").mkdir()
    with pytest.raises(ValueError, match=r"class folders without images .*\['n03000000'\]"):
        ImageNetVal(folder)


def test_imagenet_val_num_classes_must_match_layout(tmp_path):
    write_image_folder(tmp_path)
    with pytest.raises(ValueError, match="num_classes=5 but the imagefolder layout defines 2 classes"):
        ImageNetVal(tmp_path, num_classes=5)


# ----------------------------------------------------------------------------- ImageNet-Segmentation

SEG_ENTRIES = [
    seg_entry(30, 40, (5, 8, 20, 30), bg=(10, 20, 30), fg=(250, 5, 5)),  # H=30 < W=40
    seg_entry(50, 20, (30, 2, 45, 12), bg=(0, 0, 200), fg=(5, 250, 5)),  # H=50 > W=20
]


def _write_v73(path: Path, **kwargs) -> Path:
    images, masks = zip(*SEG_ENTRIES)
    kwargs.setdefault("targets", [3, 7])
    kwargs.setdefault("ids", ["n01440764_10026", "n02119789_7"])
    write_gtsegs_v73(path, list(images), list(masks), **kwargs)
    return path


def _check_segmentation_items(ds: ImageNetSegmentation) -> None:
    for i, (image, mask) in enumerate(SEG_ENTRIES):
        raw_image, raw_mask, _ = ds.raw(i)
        assert raw_image.shape == image.shape and np.array_equal(raw_image, image)
        assert raw_mask.shape == mask.shape and np.array_equal(raw_mask, mask)
        item = ds[i]
        assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (224, 224) and item["mask"].dtype == torch.int64
        assert np.array_equal(item["mask"].numpy(), nearest_224(mask))
        assert torch.equal(item["image"], SEG_224(Image.fromarray(image)))
        fg, bg = interior(item["mask"] == 1), interior(item["mask"] == 0)
        assert fg.sum() > 100 and bg.sum() > 100
        fg_colour, bg_colour = image[mask == 1][0], image[mask == 0][0]
        assert (colour_at(item["image"], fg) - torch.tensor(fg_colour).view(3, 1)).abs().max() < 1e-3
        assert (colour_at(item["image"], bg) - torch.tensor(bg_colour).view(3, 1)).abs().max() < 1e-3


def test_imagenet_seg_v73_round_trip(tmp_path):
    ds = ImageNetSegmentation(_write_v73(tmp_path / "gtsegs_ijcv.mat"))
    assert len(ds) == 2 and ds.has_targets
    _check_segmentation_items(ds)
    assert [ds[i]["label"] for i in range(2)] == [3, 7]
    assert ds[1]["labels"].shape == (1000,) and ds[1]["labels"].nonzero().ravel().tolist() == [7]
    assert [ds.image_id(i) for i in range(2)] == ["n01440764_10026", "n02119789_7"]
    ds[0]  # opens the HDF5 handle; pickling (DataLoader workers) must still work
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone.raw(1)[1], SEG_ENTRIES[1][1])
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 224, 224) and batch["mask"].shape == (2, 224, 224)


def test_imagenet_seg_targets_optional_and_offset(tmp_path):
    ds = ImageNetSegmentation(_write_v73(tmp_path / "a.mat", targets=None, ids=None))
    assert not ds.has_targets and ds.image_id(0) is None
    assert ds[0]["label"] == -1 and ds[0]["labels"].sum() == 0
    path = _write_v73(tmp_path / "b.mat", targets=[1, 1000])
    ds = ImageNetSegmentation(path, label_offset=-1)
    assert [ds[0]["label"], ds[1]["label"]] == [0, 999]
    plain = ImageNetSegmentation(path)
    with pytest.raises(ValueError, match=r"entry 1 has target 1000 → label 1000, outside 0\.\.999"):
        plain[1]
    ds.close(), plain.close()  # release the HDF5 handles so the file can be rewritten
    with h5py.File(path, "r+") as f:  # targets stored as a plain N×1 numeric array instead of a cell
        del f["value/target"]
        f["value/target"] = np.array([[12.0], [34.0]])
    assert [ImageNetSegmentation(path)[i]["label"] for i in range(2)] == [12, 34]
    with h5py.File(path, "r+") as f:
        f["value/target"][1, 0] = 2.5
    with pytest.raises(ValueError, match="value/target of entry 1 is not a single integer"):
        ImageNetSegmentation(path)[1]


def test_imagenet_seg_v5_fallback(tmp_path):
    images, masks = zip(*SEG_ENTRIES)
    write_gtsegs_v5(tmp_path / "v5.mat", list(images), list(masks), targets=[4, 2])
    ds = ImageNetSegmentation(tmp_path / "v5.mat")
    assert len(ds) == 2 and ds.has_targets
    _check_segmentation_items(ds)
    assert [ds[i]["label"] for i in range(2)] == [4, 2]


def test_imagenet_seg_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageNet-Segmentation \.mat file not found: .*none\.mat"):
        ImageNetSegmentation(tmp_path / "none.mat")
    _write_v73(tmp_path / "nogt.mat", fields=("img", "foo"))
    with pytest.raises(ValueError, match=r"expected datasets value/img and value/gt, found \['value/foo', 'value/img'\]"):
        ImageNetSegmentation(tmp_path / "nogt.mat")
    images, masks = zip(*SEG_ENTRIES)
    write_gtsegs_v73(tmp_path / "count.mat", list(images), list(masks[:1]))
    with pytest.raises(ValueError, match="value/gt has 1 entries but value/img has 2"):
        ImageNetSegmentation(tmp_path / "count.mat")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["value/img"] = np.zeros((2, 1))
        f["value/gt"] = np.zeros((2, 1))
    with pytest.raises(ValueError, match="value/img should hold object references"):
        ImageNetSegmentation(tmp_path / "plain.h5")
    bad_mask = masks[1].copy()
    bad_mask[0, 0] = 2
    write_gtsegs_v73(tmp_path / "values.mat", list(images), [masks[0], bad_mask])
    ds = ImageNetSegmentation(tmp_path / "values.mat")
    ds[0]
    with pytest.raises(ValueError, match=r"mask of entry 1 holds values \[0, 1, 2\], expected 0/1"):
        ds[1]
    write_gtsegs_v73(tmp_path / "shape.mat", list(images), [masks[1], masks[0]])
    with pytest.raises(ValueError, match=r"entry 0 has a \(50, 20\) mask for a \(30, 40\) image"):
        ImageNetSegmentation(tmp_path / "shape.mat")[0]
    import scipy.io

    scipy.io.savemat(tmp_path / "v5_other.mat", {"images": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"expected value/img and value/gt, found \['images'\]"):
        ImageNetSegmentation(tmp_path / "v5_other.mat")
    (tmp_path / "junk.mat").write_bytes(b"\x00junk" * 100)
    with pytest.raises(ValueError, match="neither an HDF5 .MATLAB v7.3. nor a MATLAB v5 file"):
        ImageNetSegmentation(tmp_path / "junk.mat")
    with pytest.raises(IndexError, match="index 2 out of range for 2 images"):
        ImageNetSegmentation(_write_v73(tmp_path / "ok.mat"))[2]


# ----------------------------------------------------------------------------- PASCAL VOC 2012

VOC_ENTRIES = {
    # aeroplane (value 1) 15×20 = 300 px, person (value 15) 16×28 = 448 px
    "2007_000032": voc_entry(40, 60, [(1, (5, 5, 20, 25)), (15, (22, 30, 38, 58))], bg=(90, 90, 90)),
    # one dog (value 12)
    "2007_000039": voc_entry(48, 36, [(12, (10, 6, 40, 30))], bg=(120, 60, 0)),
}


def test_voc_items_masks_labels_and_alignment(tmp_path):
    base = write_voc_tree(tmp_path, VOC_ENTRIES, {"val": list(VOC_ENTRIES), "train": ["2007_000039"]})
    ds = VOCSegmentation2012(tmp_path, split="val")
    assert len(ds) == 2 and ds.ids == list(VOC_ENTRIES) and ds.num_classes == 20 and ds.classes == VOC_CLASSES
    expected = {"2007_000032": (14, [0, 14]), "2007_000039": (11, [11])}
    for i, (name, (image, mask)) in enumerate(VOC_ENTRIES.items()):
        raw_image, raw_mask = ds.raw(i)
        assert np.array_equal(raw_mask, mask)
        jpeg = base / "JPEGImages" / f"{name}.jpg"
        assert np.array_equal(raw_image, np.asarray(Image.open(jpeg).convert("RGB")))
        assert np.median(np.abs(raw_image.astype(int) - image)) <= 2  # JPEG: exact up to compression
        item = ds[i]
        label, present = expected[name]
        assert item["label"] == label and item["index"] == i
        assert item["labels"].nonzero().ravel().tolist() == present and item["labels"].dtype == torch.float32
        assert item["mask"].dtype == torch.int64 and np.array_equal(item["mask"].numpy(), nearest_224(mask))
        assert (item["mask"] == 255).any()  # object borders are kept as ignore
        assert torch.equal(item["image"], SEG_224(Image.open(jpeg).convert("RGB")))
        for value in np.unique(mask[(mask > 0) & (mask < 255)]):
            inside = interior(item["mask"] == int(value))
            assert inside.sum() > 50
            error = colour_at(item["image"], inside) - torch.tensor(COLOURS[value % 5]).view(3, 1)
            assert error.abs().max() < 8  # JPEG
    train = VOCSegmentation2012(base, split="train")  # root may be VOC2012 itself
    assert train.ids == ["2007_000039"] and train[0]["label"] == 11
    assert len(VOCSegmentation2012(tmp_path / "VOCdevkit")) == 2
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["labels"].shape == (2, 20) and batch["mask"].shape == (2, 224, 224)


def test_voc_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VOC root not found: .*absent"):
        VOCSegmentation2012(tmp_path / "absent")
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="no VOC2012 folder with JPEGImages/ found"):
        VOCSegmentation2012(tmp_path / "bare")
    base = write_voc_tree(tmp_path, VOC_ENTRIES, {"val": list(VOC_ENTRIES), "empty": []})
    with pytest.raises(FileNotFoundError, match=r"VOC split file not found: .*test\.txt \(available splits: \['empty', 'val'\]\)"):
        VOCSegmentation2012(tmp_path, split="test")
    with pytest.raises(ValueError, match="lists no images"):
        VOCSegmentation2012(tmp_path, split="empty")
    with pytest.raises(ValueError, match="split must be a split name"):
        VOCSegmentation2012(tmp_path, split="../val")
    (base / "ImageSets" / "Segmentation" / "more.txt").write_text("2007_000032\n2009_999999\n")
    with pytest.raises(FileNotFoundError, match=r"1 VOC image files of split 'more' are missing, e\.g\. \['.*2009_999999\.jpg'\]"):
        VOCSegmentation2012(tmp_path, split="more")
    image, mask = VOC_ENTRIES["2007_000032"]
    Image.fromarray(np.stack([mask] * 3, axis=2)).save(base / "SegmentationClass" / "2007_000032.png")
    with pytest.raises(ValueError, match=r"2007_000032\.png has mode 'RGB'; expected a palette"):
        VOCSegmentation2012(tmp_path)[0]
    Image.fromarray(np.where(mask == 15, 30, mask).astype(np.uint8)).save(base / "SegmentationClass" / "2007_000032.png")
    with pytest.raises(ValueError, match=r"2007_000032\.png holds values \[30\], expected 0\.\.20 or 255"):
        VOCSegmentation2012(tmp_path)[0]
    Image.fromarray(mask[:, :50]).save(base / "SegmentationClass" / "2007_000032.png")
    with pytest.raises(ValueError, match=r"is \(40, 50\) but image .*2007_000032\.jpg is \(40, 60\)"):
        VOCSegmentation2012(tmp_path)[0]
    (base / "JPEGImages" / "2007_000039.jpg").write_bytes(b"\xff\xd8truncated")
    with pytest.raises(ValueError, match=r"cannot read image .*2007_000039\.jpg"):
        VOCSegmentation2012(tmp_path)[1]


def test_readers_are_exported_from_sslx_data() -> None:
    import sslx.data
    from sslx.data.imagenet import ImageNetVal
    from sslx.data.imagenet_seg import ImageNetSegmentation
    from sslx.data.voc import VOCSegmentation2012

    assert sslx.data.ImageNetVal is ImageNetVal
    assert sslx.data.ImageNetSegmentation is ImageNetSegmentation
    assert sslx.data.VOCSegmentation2012 is VOCSegmentation2012
    assert {"ImageNetVal", "ImageNetSegmentation", "VOCSegmentation2012"} <= set(sslx.data.__all__)
    with pytest.raises(AttributeError, match="no attribute 'ImageNetTrain'"):
        sslx.data.ImageNetTrain  # noqa: B018
