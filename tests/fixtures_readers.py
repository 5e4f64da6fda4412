"""Writers of tiny files in the real formats of ImageNet val, ImageNet-Segmentation and VOC 2012."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import h5py
import numpy as np
import scipy.io
from PIL import Image

# Solid colours that stay distinct after JPEG compression.
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (240, 220, 20), (200, 40, 210)]


def solid(h: int, w: int, colour: Sequence[int]) -> np.ndarray:
    """An H×W×3 uint8 image of one colour."""
    return np.broadcast_to(np.asarray(colour, dtype=np.uint8), (h, w, 3)).copy()


def write_image_folder(root: Path) -> list[tuple[Path, int, tuple[int, int, int]]]:
    """3 PNG images in 2 wnid folders (ImageFolder layout) → [(path, sorted-wnid class, colour)]."""
    spec = [("n02000000", "b.png", 1, (20, 30)), ("n01000000", "a.png", 0, (40, 25)), ("n02000000", "c.png", 1, (33, 33))]
    out = []
    for k, (wnid, name, label, (h, w)) in enumerate(spec):
        (root / wnid).mkdir(parents=True, exist_ok=True)
        path = root / wnid / name
        Image.fromarray(solid(h, w, COLOURS[k])).save(path)
        out.append((path, label, COLOURS[k]))
    return sorted(out, key=lambda t: (t[1], t[0].name))


def write_flat_val(root: Path, labels: Sequence[int], sizes: Optional[Sequence[tuple[int, int]]] = None) -> list[Path]:
    """`ILSVRC2012_val_%08d.JPEG` JPEG files with distinct solid colours, in file-name order."""
    root.mkdir(parents=True, exist_ok=True)
    sizes = sizes or [(300, 260), (240, 320), (256, 256), (50, 70), (64, 64)][: len(labels)]
    paths = []
    for i, (h, w) in enumerate(sizes, start=1):
        path = root / f"ILSVRC2012_val_{i:08d}.JPEG"
        Image.fromarray(solid(h, w, COLOURS[i - 1])).save(path, format="JPEG", quality=95)
        paths.append(path)
    return paths


def write_devkit_meta(path: Path, synsets: Sequence[tuple[int, str, int]]) -> None:
    """A devkit-style meta.mat: struct array `synsets` with ILSVRC2012_ID, WNID, words, num_children."""
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    arr = np.empty((len(synsets), 1), dtype=dtype)
    for i, (ilsvrc_id, wnid, children) in enumerate(synsets):
        arr[i, 0] = (np.array([[ilsvrc_id]], dtype=np.uint16), np.array([wnid]), np.array([f"class {wnid}"]),
                     np.array([[children]], dtype=np.uint16))
    scipy.io.savemat(path, {"synsets": arr})


def seg_entry(h: int, w: int, box: tuple[int, int, int, int], bg: Sequence[int], fg: Sequence[int]):
    """An H×W×3 image of colour `bg` with a `fg` rectangle box=(top, left, bottom, right) and its 0/1 mask."""
    image = solid(h, w, bg)
    mask = np.zeros((h, w), dtype=np.uint8)
    t, l, b, r = box
    image[t:b, l:r] = fg
    mask[t:b, l:r] = 1
    return image, mask


def _matlab_userblock(path: Path) -> None:
    """Write the 128-byte MATLAB 7.3 header MATLAB puts in the HDF5 user block."""
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


def write_gtsegs_v73(
    path: Path,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    targets: Optional[Sequence[int]] = None,
    ids: Optional[Sequence[str]] = None,
    fields: Sequence[str] = ("img", "gt", "target", "id"),
) -> None:
    """A MATLAB v7.3 `gtsegs_ijcv.mat` as MATLAB writes it: struct `value` whose fields are 1×N cells.

    Each cell element is a reference into `#refs#`; arrays are stored with reversed (column-major) axes,
    so an H×W×3 image is a 3×W×H dataset; `gt{i}` is itself a 1×1 cell holding the H×W mask.
    """
    n = len(images)
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        value = f.create_group("value")
        value.attrs["MATLAB_class"] = np.bytes_("struct")
        counter = iter(range(10_000))

        def store(arr: np.ndarray, cls: str) -> h5py.Reference:
            ds = refs.create_dataset(f"r{next(counter)}", data=arr)
            ds.attrs["MATLAB_class"] = np.bytes_(cls)
            return ds.ref

        def cell(name: str, elements: list[h5py.Reference]) -> None:
            ds = value.create_dataset(name, (len(elements), 1), dtype=h5py.ref_dtype)
            ds.attrs["MATLAB_class"] = np.bytes_("cell")
            for i, r in enumerate(elements):
                ds[i, 0] = r

        if "img" in fields:
            cell("img", [store(np.ascontiguousarray(im.T), "uint8") for im in images])
        if "gt" in fields:
            inner = []
            for m in masks:
                ref = store(np.ascontiguousarray(m.T), "uint8")
                wrapper = refs.create_dataset(f"r{next(counter)}", (1, 1), dtype=h5py.ref_dtype)
                wrapper.attrs["MATLAB_class"] = np.bytes_("cell")
                wrapper[0, 0] = ref
                inner.append(wrapper.ref)
            cell("gt", inner)
        if targets is not None and "target" in fields:
            cell("target", [store(np.array([[float(t)]]), "double") for t in targets])
        if ids is not None and "id" in fields:
            cell("id", [store(np.array([[ord(c)] for c in s], dtype=np.uint16), "char") for s in ids])
        if "foo" in fields:
            value.create_dataset("foo", data=np.zeros((n, 1)))
    _matlab_userblock(path)


def write_gtsegs_v5(path: Path, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                    targets: Optional[Sequence[int]] = None) -> None:
    """The same content as a MATLAB v5 file (scipy.io.savemat): struct `value` with 1×N cells."""
    n = len(images)
    img = np.empty((1, n), dtype=object)
    gt = np.empty((1, n), dtype=object)
    for i in range(n):
        img[0, i] = images[i]
        inner = np.empty((1, 1), dtype=object)
        inner[0, 0] = masks[i]
        gt[0, i] = inner
    value = {"img": img, "gt": gt}
    if targets is not None:
        value["target"] = np.array([list(map(float, targets))])
    scipy.io.savemat(path, {"value": value})


def voc_palette() -> list[int]:
    """The 256-colour PASCAL VOC palette (bit-interleaved colour map), flattened RGB."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def voc_entry(h: int, w: int, objects: Sequence[tuple[int, tuple[int, int, int, int]]], bg: Sequence[int]):
    """Image and VOC mask: each (class value 1..20, box) is a rectangle of COLOURS[value % 5]
    with a 1-pixel 255 border drawn around it (as VOC's object outlines)."""
    image = solid(h, w, bg)
    mask = np.zeros((h, w), dtype=np.uint8)
    for value, (t, l, b, r) in objects:
        mask[max(t - 1, 0):b + 1, max(l - 1, 0):r + 1] = 255
        mask[t:b, l:r] = value
        image[t:b, l:r] = COLOURS[value % len(COLOURS)]
    return image, mask


def write_voc_tree(root: Path, entries: dict[str, tuple[np.ndarray, np.ndarray]],
                   splits: dict[str, Sequence[str]]) -> Path:
    """`root/VOCdevkit/VOC2012` with JPEGImages/*.jpg, SegmentationClass/*.png (palette) and split files."""
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    for name, (image, mask) in entries.items():
        Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg", format="JPEG", quality=100, subsampling=0)
        png = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
        png.putpalette(palette)
        png.save(base / "SegmentationClass" / f"{name}.png")
    for split, names in splits.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return base
