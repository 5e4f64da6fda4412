"""ImageNet-Segmentation (Guillaumin et al., `gtsegs_ijcv.mat`): images with binary object masks."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import h5py
import numpy as np
import scipy.io
from PIL import Image
import torch
from torch.utils.data import Dataset

from ._image_io import (
    ImageNormalization,
    PathLike,
    existing_file,
    one_hot,
    resize_image,
    resize_mask,
    to_normalized_tensor,
)

__all__ = ["ImageNetSegmentation"]

REQUIRED_FIELDS = ("img", "gt")


class ImageNetSegmentation(ImageNormalization, Dataset):
    """Items `image` (3×size×size float32, ImageNet-normalised), `mask` (size×size int64: 1 object, 0
    background), `label` (int: `value/target` + `label_offset`, or -1 when the file has no targets),
    `labels` (one-hot over `num_classes`, zeros when unknown), `index`.

    Reads MATLAB v7.3 (HDF5, via h5py: `value/img`, `value/gt` and optional `value/target`, `value/id`
    hold one object reference per image, arrays stored transposed) and falls back to MATLAB v5 files
    (scipy.io.loadmat, same fields). The image is resized bilinearly, the mask by nearest neighbour,
    to size×size without keeping the aspect ratio (the protocol of the AGF evaluation).
    """

    def __init__(
        self,
        mat_path: PathLike,
        size: int = 224,
        *,
        num_classes: int = 1000,
        label_offset: int = 0,
    ) -> None:
        self.mat_path = existing_file(mat_path, "ImageNet-Segmentation .mat file")
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = int(size)
        self.num_classes = int(num_classes)
        self.classes = tuple(str(i) for i in range(self.num_classes))
        self.label_offset = int(label_offset)
        self._source: _HDF5Source | _MatV5Source
        if h5py.is_hdf5(self.mat_path):
            self._source = _HDF5Source(self.mat_path)
        else:
            self._source = _MatV5Source(self.mat_path)
        if len(self._source) == 0:
            raise ValueError(f"{self.mat_path} holds no images (value/img is empty)")

    @property
    def has_targets(self) -> bool:
        """Whether the file stores a class per image (`value/target`)."""
        return self._source.has_target

    def __len__(self) -> int:
        return len(self._source)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Image (H×W×3 uint8), mask (H×W uint8, 0/1) and label of one entry at its stored resolution."""
        index = self._check_index(index)
        image = _as_rgb(self._source.image(index), self.mat_path, index)
        mask = self._source.mask(index)
        if mask.ndim != 2 or mask.shape != image.shape[:2]:
            raise ValueError(
                f"{self.mat_path}: entry {index} has a {mask.shape} mask for a {image.shape[:2]} image"
            )
        values = np.unique(mask)
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"{self.mat_path}: mask of entry {index} holds values {values[:10].tolist()}, expected 0/1")
        return image, mask.astype(np.uint8, copy=False), self._label(index)

    def close(self) -> None:
        """Release the open HDF5 handle (reopened on the next read)."""
        self._source.close()

    def image_id(self, index: int) -> Optional[str]:
        """The entry's `value/id` string (e.g. 'n01440764_10026'), or None when the file has no ids."""
        return self._source.image_id(self._check_index(index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, label = self.raw(index)
        return {
            "image": to_normalized_tensor(resize_image(Image.fromarray(image), self.size), self.mean, self.std),
            "label": label,
            "labels": one_hot(label, self.num_classes),
            "mask": torch.from_numpy(resize_mask(mask, self.size).astype(np.int64)),
            "index": self._check_index(index),
        }

    def _label(self, index: int) -> int:
        target = self._source.target(index)
        if target is None:
            return -1
        label = target + self.label_offset
        if not 0 <= label < self.num_classes:
            raise ValueError(
                f"{self.mat_path}: entry {index} has target {target} → label {label}, outside 0..{self.num_classes - 1} "
                "(set label_offset / num_classes to the file's convention)"
            )
        return label

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        return index % n

    def __repr__(self) -> str:
        return f"ImageNetSegmentation({str(self.mat_path)!r}, images={len(self)}, size={self.size})"


def _as_rgb(image: np.ndarray, path: Path, index: int) -> np.ndarray:
    """Check an entry's image is uint8 H×W×3 (greyscale H×W is replicated to 3 channels)."""
    if image.dtype != np.uint8:
        raise ValueError(f"{path}: image of entry {index} has dtype {image.dtype}, expected uint8")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{path}: image of entry {index} has shape {image.shape}, expected H×W×3")
    return image


def _scalar_target(value: np.ndarray, path: Path, index: int) -> int:
    """The single integer stored as an entry's target."""
    arr = np.asarray(value)
    v = arr.ravel()[0] if arr.size == 1 and np.issubdtype(arr.dtype, np.number) else None
    if v is None or not np.isfinite(v) or float(v) != int(v):
        raise ValueError(f"{path}: value/target of entry {index} is not a single integer "
                         f"(shape {arr.shape}, dtype {arr.dtype})")
    return int(v)


class _HDF5Source:
    """Entries of a MATLAB v7.3 file; the h5py handle is opened lazily per process (DataLoader workers)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Optional[h5py.File] = None
        self._pid: Optional[int] = None
        try:
            with h5py.File(path, "r") as f:
                group = f.get("value")
                present = [k for k in REQUIRED_FIELDS if isinstance(group, h5py.Group) and isinstance(group.get(k), h5py.Dataset)]
                if len(present) != len(REQUIRED_FIELDS):
                    raise ValueError(
                        f"{path} is not an ImageNet-Segmentation file: expected datasets value/img and value/gt, "
                        f"found {_dataset_names(f)}"
                    )
                self._n = int(group["img"].size)
                self.has_target = isinstance(group.get("target"), h5py.Dataset)
                self.has_id = isinstance(group.get("id"), h5py.Dataset)
                for field in ("gt", "target", "id"):
                    if isinstance(group.get(field), h5py.Dataset) and group[field].size != self._n:
                        raise ValueError(f"{path}: value/{field} has {group[field].size} entries but value/img has {self._n}")
                for field in ("img", "gt"):
                    if h5py.check_dtype(ref=group[field].dtype) is not h5py.Reference:
                        raise ValueError(f"{path}: value/{field} should hold object references (a MATLAB cell array), "
                                         f"found dtype {group[field].dtype}")
        except OSError as e:
            raise ValueError(f"cannot read {path} as HDF5 / MATLAB v7.3: {e}") from e

    def __len__(self) -> int:
        return self._n

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": None}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._pid = None, None

    def _group(self) -> h5py.Group:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file["value"]

    def _entry(self, field: str, index: int) -> np.ndarray:
        """The array stored for one entry of a cell field, following nested cells, in MATLAB orientation."""
        group = self._group()
        item = group[field][np.unravel_index(index, group[field].shape)]
        for _ in range(8):  # cells of cells: follow references down to the numeric array
            if not isinstance(item, h5py.Reference):
                return np.asarray(item)
            if not item:
                raise ValueError(f"{self.path}: value/{field} entry {index} is a null reference")
            data = self._file[item]
            if data.attrs.get("MATLAB_empty", 0):
                raise ValueError(f"{self.path}: value/{field} entry {index} is empty")
            arr = data[()]
            if h5py.check_dtype(ref=data.dtype) is h5py.Reference:
                if arr.size != 1:
                    raise ValueError(f"{self.path}: value/{field} entry {index} is a cell of {arr.size} items, expected 1")
                item = arr.ravel()[0]
            else:
                return np.asarray(arr).T  # MATLAB writes column-major: reverse the axes
        raise ValueError(f"{self.path}: value/{field} entry {index} nests references too deeply")

    def image(self, index: int) -> np.ndarray:
        return self._entry("img", index)

    def mask(self, index: int) -> np.ndarray:
        return self._entry("gt", index)

    def target(self, index: int) -> Optional[int]:
        if not self.has_target:
            return None
        return _scalar_target(self._entry("target", index), self.path, index)

    def image_id(self, index: int) -> Optional[str]:
        if not self.has_id:
            return None
        return _decode_matlab_chars(self._entry("id", index))


class _MatV5Source:
    """Entries of a MATLAB v5 file (loaded whole by scipy.io.loadmat; arrays are already H×W[×3])."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            mat = scipy.io.loadmat(path, squeeze_me=False)
        except Exception as e:  # scipy raises several unrelated types for foreign files
            raise ValueError(f"{path} is neither an HDF5 (MATLAB v7.3) nor a MATLAB v5 file: {e}") from e
        value = mat.get("value")
        fields = value.dtype.names if isinstance(value, np.ndarray) and value.dtype.names else ()
        if any(f not in fields for f in REQUIRED_FIELDS):
            found = [f"value/{f}" for f in fields] or sorted(k for k in mat if not k.startswith("__"))
            raise ValueError(
                f"{path} is not an ImageNet-Segmentation file: expected value/img and value/gt, found {found}"
            )
        record = value.ravel()[0]
        self._cells = {f: np.asarray(record[f]).ravel() for f in fields if f in ("img", "gt", "target", "id")}
        self._n = self._cells["img"].size
        for field, cells in self._cells.items():
            if cells.size != self._n:
                raise ValueError(f"{path}: value/{field} has {cells.size} entries but value/img has {self._n}")
        self.has_target = "target" in self._cells
        self.has_id = "id" in self._cells

    def __len__(self) -> int:
        return self._n

    def close(self) -> None:
        pass  # nothing held open: loadmat read the whole file

    def _entry(self, field: str, index: int) -> np.ndarray:
        item = self._cells[field][index]
        while isinstance(item, np.ndarray) and item.dtype == object:
            if item.size != 1:
                raise ValueError(f"{self.path}: value/{field} entry {index} is a cell of {item.size} items, expected 1")
            item = item.ravel()[0]
        return np.asarray(item)

    def image(self, index: int) -> np.ndarray:
        return self._entry("img", index)

    def mask(self, index: int) -> np.ndarray:
        return self._entry("gt", index)

    def target(self, index: int) -> Optional[int]:
        if not self.has_target:
            return None
        return _scalar_target(self._entry("target", index), self.path, index)

    def image_id(self, index: int) -> Optional[str]:
        if not self.has_id:
            return None
        arr = self._entry("id", index)
        return str(arr.ravel()[0]) if arr.dtype.kind == "U" else _decode_matlab_chars(arr)


def _decode_matlab_chars(arr: np.ndarray) -> str:
    """MATLAB char arrays are stored as uint16 code units."""
    return "".join(chr(int(c)) for c in np.asarray(arr).ravel()).strip()


def _dataset_names(f: h5py.File) -> list[str]:
    """Names of the datasets in an HDF5 file, skipping MATLAB's hidden '#refs#' store."""
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) and not name.startswith("#") else None)
    return names
