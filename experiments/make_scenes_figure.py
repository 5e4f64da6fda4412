"""Draw docs/img/scenes.png: a grid of benchmark scenes, each above its class mask."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from sslx.data.scenes import SCENE_CLASSES, ScenesDataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def mask_colormap(num_classes: int) -> ListedColormap:
    """Black background, then one distinct colour per class."""
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, 20))[:num_classes]
    return ListedColormap(np.vstack([[0, 0, 0, 1], colors]))


def make_figure(out: Path, count: int = 16, columns: int = 8, seed: int = 0, resolution: int = 128) -> None:
    """Render `count` mixed single/pair test scenes with their masks and save them to `out`."""
    ds = ScenesDataset("test", size=count, seed=seed, resolution=resolution, objects="mixed")
    rows = 2 * ((count + columns - 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.75 * rows))
    cmap = mask_colormap(ds.num_classes)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(count):
        item = ds[i]
        r, c = 2 * (i // columns), i % columns
        axes[r, c].imshow(ds.denormalize(item["image"]).clamp(0, 1).permute(1, 2, 0).numpy())
        names = [SCENE_CLASSES[k] for k in item["object_labels"].tolist() if k >= 0]
        axes[r, c].set_title(" + ".join(names), fontsize=7)
        axes[r + 1, c].imshow(item["mask"].numpy(), cmap=cmap, vmin=0, vmax=ds.num_classes, interpolation="nearest")
    fig.tight_layout(pad=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=85)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the figure is a docs asset
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "scenes.png")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_figure(args.out, count=args.count, seed=args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
