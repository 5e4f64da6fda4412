"""ImageNet (ILSVRC2012) validation images with their labels, as sslx item dicts."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import scipy.io
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import find_classes, make_dataset

from ._image_io import (
    IMAGE_EXTENSIONS,
    EvalTransform,
    ImageNormalization,
    PathLike,
    existing_dir,
    existing_file,
    is_image_file,
    one_hot,
    open_rgb,
)

__all__ = ["ImageNetVal", "read_label_file", "read_devkit_meta"]

DEFAULT_NUM_CLASSES = 1000


class ImageNetVal(ImageNormalization, Dataset):
    """ImageNet validation images → dicts `image` (3×H×W float32), `label` (int), `labels` (one-hot), `index`.

    Two layouts:
      * ImageFolder: `root/<wnid>/*.JPEG`; class index = position of the wnid in sorted order
        (torchvision's convention, the one pretrained torchvision models use).
      * Flat: `root/ILSVRC2012_val_*.JPEG` plus `labels_file`, either one integer per line in sorted
        file-name order (e.g. the devkit's `ILSVRC2012_validation_ground_truth.txt`) or
        "name label" lines (`val.txt` style, 0-based).

    The devkit ground truth holds 1-based ILSVRC2012_IDs whose order is NOT the sorted-wnid order of
    torchvision models: pass `devkit_meta=".../data/meta.mat"` to map them to sorted-wnid indices.
    `one_based=True` alone only subtracts 1 (right for files that are 1-based in the sorted-wnid order).
    There is no `mask` key: ImageNet val has no segmentation.
    """

    def __init__(
        self,
        root: PathLike,
        labels_file: Optional[PathLike] = None,
        transform: Optional[Callable[[Image.Image], Tensor]] = None,
        *,
        one_based: Optional[bool] = None,
        devkit_meta: Optional[PathLike] = None,
        num_classes: Optional[int] = None,
    ) -> None:
        self.root = existing_dir(root, "ImageNet val root")
        self.transform = transform if transform is not None else EvalTransform(256, 224, self.mean, self.std)
        if labels_file is None:
            if one_based is not None or devkit_meta is not None:
                raise ValueError("one_based and devkit_meta only apply with labels_file (flat layout)")
            self.layout = "imagefolder"
            self.samples, self.classes = _scan_image_folder(self.root)
        else:
            self.layout = "flat"
            self.samples, self.classes = _scan_flat(
                self.root, existing_file(labels_file, "labels file"), one_based, devkit_meta, num_classes
            )
        if num_classes is not None and num_classes != len(self.classes):
            raise ValueError(f"num_classes={num_classes} but the {self.layout} layout defines {len(self.classes)} classes")
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index = index % len(self)
        path, label = self.samples[index]
        image = self.transform(open_rgb(path))
        if not isinstance(image, Tensor):
            raise TypeError(f"transform must return a torch.Tensor, got {type(image).__name__}")
        return {"image": image, "label": label, "labels": one_hot(label, self.num_classes), "index": index}

    def __repr__(self) -> str:
        return f"ImageNetVal(root={str(self.root)!r}, layout={self.layout!r}, images={len(self)}, classes={self.num_classes})"


def _scan_image_folder(root: Path) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    """(path, class index) pairs of an ImageFolder tree, classes = sorted subfolder names."""
    subdirs = [p for p in root.iterdir() if p.is_dir()]
    if not subdirs:
        loose = [p for p in root.iterdir() if is_image_file(p)]
        if loose:
            raise ValueError(
                f"{root} holds {len(loose)} images but no class subfolders: for the flat layout "
                "pass labels_file= (e.g. ILSVRC2012_validation_ground_truth.txt or val.txt)"
            )
        raise ValueError(f"{root} is empty: no class subfolders and no images")
    classes, class_to_idx = find_classes(root)
    samples = make_dataset(root, class_to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True)
    counts = np.bincount([c for _, c in samples], minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ValueError(f"class folders without images in {root}: {empty[:10]}" + (" ..." if len(empty) > 10 else ""))
    return [(Path(p), int(c)) for p, c in samples], tuple(classes)


def _scan_flat(
    root: Path,
    labels_file: Path,
    one_based: Optional[bool],
    devkit_meta: Optional[PathLike],
    num_classes: Optional[int],
) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    """(path, class index) pairs of a flat folder labelled by `labels_file`, and the class names."""
    images = sorted((p for p in root.iterdir() if is_image_file(p)), key=lambda p: p.name)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) directly in {root}")
    if devkit_meta is not None:
        if one_based is False:
            raise ValueError("devkit ILSVRC2012_IDs are 1-based: one_based=False contradicts devkit_meta")
        one_based = True
    elif one_based:
        warnings.warn(
            "one_based=True only subtracts 1; devkit ILSVRC2012_IDs are not in the sorted-wnid order of "
            "torchvision models — pass devkit_meta=<devkit>/data/meta.mat to map them",
            UserWarning,
            stacklevel=3,
        )
    names, labels = read_label_file(labels_file)
    offset = 1 if one_based else 0
    if devkit_meta is not None:
        id_to_index, classes = read_devkit_meta(devkit_meta)
        unknown = sorted({v for v in labels if v not in id_to_index})
        if unknown:
            raise ValueError(f"{labels_file}: ILSVRC2012_IDs {unknown[:10]} are not leaf classes of {devkit_meta}")
        labels = [id_to_index[v] for v in labels]
    else:
        labels = [v - offset for v in labels]
        count = DEFAULT_NUM_CLASSES if num_classes is None else num_classes
        classes = tuple(str(i) for i in range(count))
    bad = sorted({v for v in labels if not 0 <= v < len(classes)})
    if bad:
        raw = [v + offset for v in bad[:10]]
        raise ValueError(
            f"{labels_file}: labels {raw} out of range for {len(classes)} classes "
            f"({'1-based' if offset else '0-based'}; check one_based / num_classes)"
        )
    if names is None:
        if len(labels) != len(images):
            raise ValueError(
                f"{labels_file} has {len(labels)} labels but {root} has {len(images)} images; "
                "one label per image, in file-name order, is expected"
            )
        return list(zip(images, labels)), classes
    return _match_named_labels(root, labels_file, images, names, labels), classes


def _match_named_labels(
    root: Path, labels_file: Path, images: list[Path], names: list[str], labels: list[int]
) -> list[tuple[Path, int]]:
    """Pair each image of `root` with the label its name has in a "name label" file."""
    by_name = {p.name: p for p in images}
    by_stem = {p.stem: p for p in images}
    paired: dict[Path, int] = {}
    missing = []
    for name, label in zip(names, labels):
        path = by_name.get(Path(name).name) or by_stem.get(Path(name).name)
        if path is None:
            missing.append(name)
        elif path in paired:
            raise ValueError(f"{labels_file} lists {name} more than once")
        else:
            paired[path] = label
    if missing:
        raise ValueError(f"{labels_file} names {len(missing)} images not in {root}, e.g. {missing[:5]}")
    if len(paired) != len(images):
        unlabelled = [p.name for p in images if p not in paired]
        raise ValueError(
            f"{labels_file} has {len(paired)} labels but {root} has {len(images)} images; "
            f"unlabelled: {unlabelled[:5]}"
        )
    return [(p, paired[p]) for p in images]


def read_label_file(path: PathLike) -> tuple[Optional[list[str]], list[int]]:
    """Parse one-integer-per-line or "name label" lines → (names or None, raw integer labels)."""
    p = existing_file(path, "labels file")
    names: list[str] = []
    labels: list[int] = []
    style = None
    try:
        text = p.read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"labels file {p} is not a text file: {e}") from e
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        this_style = {1: "ids", 2: "named"}.get(len(fields))
        if this_style is None or (style is not None and this_style != style):
            raise ValueError(
                f"{p}, line {lineno}: expected '<label>' or '<file name> <label>' consistently, got {line.strip()!r}"
            )
        style = this_style
        try:
            labels.append(int(fields[-1]))
        except ValueError:
            raise ValueError(f"{p}, line {lineno}: label {fields[-1]!r} is not an integer") from None
        if style == "named":
            names.append(fields[0])
    if not labels:
        raise ValueError(f"labels file {p} is empty")
    return (names if style == "named" else None), labels


def read_devkit_meta(path: PathLike) -> tuple[dict[int, int], tuple[str, ...]]:
    """Read the devkit's meta.mat → ({ILSVRC2012_ID: sorted-wnid index}, sorted leaf wnids)."""
    p = existing_file(path, "devkit meta.mat")
    try:
        mat = scipy.io.loadmat(p, squeeze_me=True)
    except Exception as e:  # scipy raises several unrelated types for foreign files
        raise ValueError(f"cannot read devkit meta file {p} as a MATLAB file: {e}") from e
    if "synsets" not in mat:
        raise ValueError(f"{p} has no 'synsets' variable (found {sorted(k for k in mat if not k.startswith('__'))})")
    synsets = np.atleast_1d(mat["synsets"])
    fields = synsets.dtype.names or ()
    needed = ("ILSVRC2012_ID", "WNID", "num_children")
    if any(f not in fields for f in needed):
        raise ValueError(f"{p}: 'synsets' needs fields {list(needed)}, found {list(fields)}")
    leaves = [(int(s["ILSVRC2012_ID"]), str(s["WNID"])) for s in synsets if int(s["num_children"]) == 0]
    if not leaves:
        raise ValueError(f"{p}: no leaf synsets (num_children == 0)")
    wnids = tuple(sorted(w for _, w in leaves))
    position = {w: i for i, w in enumerate(wnids)}
    return {i: position[w] for i, w in leaves}, wnids
