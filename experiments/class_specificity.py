"""Class specificity (the paper's saliency-bias claim, Fig. 2c): explain each object's class of a two-object scene.

    python experiments/class_specificity.py                 # embedded VGG on two-object test scenes
    python experiments/class_specificity.py --model resnet --methods agf,rap,lrp

For every scene with objects A and B (different classes) each method explains class A and class B
separately; the positive part of each map is scored by IoU with object A's and object B's visible mask.
A class-specific method has IoU(own object) > IoU(other object); a class-agnostic one about equal values.
Writes experiments/results/class_specificity.{md,json} and class_specificity_example.png.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import supervised_eval as se  # noqa: E402

DEFAULT_N_IMAGES = 64
DEFAULT_METHODS = ("agf", "gradcam", "clrp", "sglrp", "lrp", "fullgrad", "rap", "lrp_ab", "gradient_shap")
# The paper (Fig. 2c text): LRP, FullGrad and RAP give similar maps for both classes; Grad-CAM, CLRP, SGLRP
# and AGF separate the classes.
PAPER_CLAIM = {"lrp": "class-agnostic", "fullgrad": "class-agnostic", "rap": "class-agnostic",
               "gradcam": "class-specific", "clrp": "class-specific", "sglrp": "class-specific",
               "agf": "class-specific"}


def example_figure(model: Any, methods: Sequence[str], seed: int) -> Any:
    """Paper Fig. 2c on the embedded benchmark: the two-object scene the model is surest of, both classes."""
    from sslx.data.scenes import SCENE_CLASSES, collate_scenes
    from sslx.viz import two_class_figure

    data = se.scene_dataset("pair", seed)
    batch = collate_scenes([data[i] for i in range(48)])
    device = next(model.parameters()).device  # Trainer.predict may have left the model on an accelerator
    images, objects = batch["image"].to(device), batch["object_labels"].to(device)
    with torch.no_grad():
        probs = model(images).softmax(dim=1)
    best = int(probs.gather(1, objects).min(dim=1).values.argmax())
    x, pair = images[best:best + 1], objects[best]
    explainers = se.Explainers(model, se.method_factories(methods))
    maps_a = {se.LABELS[m]: explainers.explain(m, x, pair[:1]).cpu() for m in methods}
    maps_b = {se.LABELS[m]: explainers.explain(m, x, pair[1:]).cpu() for m in methods}
    names = [SCENE_CLASSES[int(c)] for c in pair]
    return two_class_figure(x[0].cpu(), maps_a, maps_b, f"A: {names[0]}", f"B: {names[1]}", data.mean, data.std)


def markdown(all_scenes: dict[str, Any], both: dict[str, Any], methods: Sequence[str], args: Any, n: int,
             n_both: int) -> str:
    """Per method: IoU with own vs other object, their difference, and the paper's claim."""
    header = ["method", "paper's claim", "IoU own", "IoU other", "own − other",
              f"own − other, both objects in top-2 (n = {n_both})"]
    rows = []
    for m in methods:
        a, b = all_scenes[m], both[m]
        rows.append([se.LABELS[m], PAPER_CLAIM.get(m, "–"), harness.with_ci(a, "iou_own"),
                     harness.with_ci(a, "iou_other"), harness.with_ci(a, "difference"), harness.with_ci(b, "difference")])
    return (
        "# Class specificity on two-object scenes (IoU in %, higher own − other = more class-specific)\n\n"
        + harness.markdown_table(header, rows)
        + f"\nData: first n = {n} two-object test scenes of the sslx benchmark (two different classes, 128×128), "
          f"model `{args.model}` (a single-label softmax classifier, as the paper's VGG-19). Each method explains "
          "class A (object 1) and class B (object 2) separately; each map's region is its positive part (> 0) for "
          "signed maps and its above-mean part for non-negative maps (Grad-CAM, LRP, FullGrad, IG, SmoothGrad); "
          "IoU with each object's visible-pixel mask (`sslx.metrics.class_specificity`). IoU own = mean over the "
          "two maps of IoU(map for A, A) and IoU(map for B, B); IoU other = IoU(map for A, B) and IoU(map for B, A). "
          "The last column keeps only scenes whose top-2 predicted classes "
          "are the two objects' classes (the classifier sees both). The paper states its claim qualitatively "
          "(Fig. 2c); no numbers exist to compare with. Example: `class_specificity_example.png`.\n\n"
        + harness.CI_NOTE + " `difference_se` in the JSON = std of per-scene differences / √n.\n"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Score every method's class specificity and write the results files; returns the JSON data."""
    p = harness.experiment_parser(__doc__)
    se.add_model_option(p)
    se.add_methods_option(p, DEFAULT_METHODS)
    p.add_argument("--no-figure", action="store_true", help="skip the example figure")
    args = p.parse_args(argv)
    harness.setup(args)
    methods = se.parse_methods(args.methods, [m for m in se.TABLE3_METHODS if m not in se.NOT_IMPLEMENTED])
    model = se.load_model(args.model)
    explainers = se.Explainers(model, se.method_factories(methods))
    loader = se.make_loader(se.scene_dataset("pair", args.seed), args.n_images or DEFAULT_N_IMAGES, args.batch_size)
    rows = harness.run_predict(se.ClassSpecificityScorer(explainers), loader, args)
    both = rows["both_in_top2"].bool()
    summary = se.specificity_summary(rows, methods)
    summary_both = se.specificity_summary(rows, methods, subset=both)
    n, n_both = int(rows["ids"].numel()), int(both.sum())
    data = {"experiment": "class_specificity", "model": args.model, "n_images": n, "n_both_in_top2": n_both,
            "methods": summary, "methods_both_in_top2": summary_both, "paper_claim": PAPER_CLAIM,
            "conventions": {"region": "positive part (> 0) of signed maps, above-mean part of non-negative maps",
                            "iou": "IoU (%) with each object's visible-pixel instance mask",
                            "difference_se": "std of per-scene (own − other) / sqrt(n)",
                            "ci95": harness.CI_NOTE}}
    figures = {} if args.no_figure else {"example": example_figure(model, methods, args.seed)}
    harness.write_results("class_specificity", markdown(summary, summary_both, methods, args, n, n_both), data, args,
                          figures=figures)
    return data


if __name__ == "__main__":
    main()
