"""Draw docs/img/gallery.png: explanation methods side by side on benchmark scenes, and a two-object scene
explained once for each object's class (paper Fig. 2a/2c on the embedded supervised model).

    python experiments/make_gallery.py [--model vgg|resnet] [--out docs/img/gallery.png]
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from sslx._io import atomic_write
from sslx.assets import SUPERVISED, load_embedded
from sslx.data.scenes import SCENE_CLASSES, ScenesDataset
from sslx.explain_api import METHODS, explain
from sslx.viz import explanation_grid, two_class_figure

ROOT = Path(__file__).resolve().parents[1]
# Shown in this order when registered; "agf" first, then the paper's baselines.
PREFERRED_METHODS = ("agf", "gradcam", "lrp", "clrp", "sglrp", "rap", "fullgrad", "integrated_gradients")
LABELS = {"agf": "AGF", "gradcam": "Grad-CAM", "lrp": "LRP", "clrp": "CLRP", "sglrp": "SGLRP", "rap": "RAP",
          "fullgrad": "FullGrad", "integrated_gradients": "Integrated Grad."}
DPI = 90


def gallery_methods() -> list[str]:
    """The preferred methods that sslx.explain currently registers."""
    return [m for m in PREFERRED_METHODS if m in METHODS]


def all_methods(model: nn.Module, x: Tensor, target: Tensor, methods: list[str]) -> dict[str, Tensor]:
    """{method label: B×1×H×W heatmaps} for the given targets."""
    return {LABELS.get(method, method): explain(model, x, target, method=method).detach() for method in methods}


def figure_pixels(figure) -> np.ndarray:
    """Render a matplotlib Figure to an H×W×3 uint8 array at the gallery's resolution."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return np.asarray(Image.open(buffer).convert("RGB"))


def stack_vertically(parts: list[np.ndarray], gap: int = 24) -> np.ndarray:
    """Stack RGB images top to bottom on white, centred, with `gap` pixels between them."""
    width = max(p.shape[1] for p in parts)
    height = sum(p.shape[0] for p in parts) + gap * (len(parts) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    top = 0
    for part in parts:
        left = (width - part.shape[1]) // 2
        canvas[top:top + part.shape[0], left:left + part.shape[1]] = part
        top += part.shape[0] + gap
    return canvas


def make_gallery(out: Path, model_name: str = "vgg", scenes: int = 4) -> Path:
    """Explain a few test scenes with every gallery method and one two-object scene per object; save the PNG."""
    model = load_embedded(model_name)
    methods = gallery_methods()
    # Selection rule: the first `scenes` single-object test scenes and the first two-object test scene,
    # whatever the model makes of them (no picking of good cases).
    single = ScenesDataset("test", size=scenes)
    pair = ScenesDataset("test", size=1, objects="pair")

    x = torch.stack([single[i]["image"] for i in range(scenes)])
    labels = torch.tensor([single[i]["label"] for i in range(scenes)])
    masks = torch.stack([single[i]["mask"] for i in range(scenes)])
    with torch.no_grad():
        predicted = model(x).argmax(1)
    grid = explanation_grid(x, all_methods(model, x, labels, methods), masks=masks,
                            titles=[f"{SCENE_CLASSES[c]} (predicted {SCENE_CLASSES[q]})"
                                    for c, q in zip(labels.tolist(), predicted.tolist())],
                            mean=single.mean, std=single.std, cell_size=1.6)
    grid.suptitle(f"Embedded supervised {model_name.upper()}, test scenes 0-{scenes - 1}: each row explains the "
                  "scene's true class (red: evidence for, blue: against)", fontsize="medium")

    item = pair[0]
    xp = item["image"][None]
    a, b = item["object_labels"].tolist()
    maps_a = all_methods(model, xp, torch.tensor([a]), methods)
    maps_b = all_methods(model, xp, torch.tensor([b]), methods)
    both = two_class_figure(xp, maps_a, maps_b, SCENE_CLASSES[a], SCENE_CLASSES[b],
                            mean=pair.mean, std=pair.std, cell_size=1.6)
    both.suptitle(f"Two-object test scene 0, explained for each object's class ({SCENE_CLASSES[a]} above, "
                  f"{SCENE_CLASSES[b]} below)", fontsize="medium")

    picture = stack_vertically([figure_pixels(grid), figure_pixels(both)])
    path = atomic_write(out, lambda handle: Image.fromarray(picture).save(handle, format="PNG", optimize=True),
                        make_parents=True)
    path.chmod(0o644)  # the temp file was private; this is a docs asset
    return path


def main() -> None:
    """Command line: choose the model and the output path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg", choices=SUPERVISED)
    parser.add_argument("--scenes", type=int, default=4, help="single-object scenes in the method grid")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "gallery.png")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.time()
    path = make_gallery(args.out, args.model, args.scenes)
    print(f"wrote {path} with methods {gallery_methods()} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
