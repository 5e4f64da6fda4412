"""Table 2 and Fig. 3 of the AGF paper: negative perturbation AUC (predicted and target class), all methods.

    python experiments/table2_perturbation.py                       # embedded VGG on test scenes
    python experiments/table2_perturbation.py --model resnet
    python experiments/table2_perturbation.py --imagenet-val /data/imagenet/val --model torchvision:vgg19
    python experiments/table2_perturbation.py --order positive      # the positive test (lower is better)

Writes experiments/results/table2.{md,json} and table2_curves.png (table2_positive.* for --order positive).
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import supervised_eval as se  # noqa: E402

DEFAULT_N_IMAGES = 96
VARIANTS = ("predicted", "target")
# Table 2 of the paper (VGG-19, ImageNet validation set; AUC of accuracy over p = 0.1…0.9 presumably).
PAPER = {"predicted": {"integrated_gradients": 10.4, "smoothgrad": 12.0, "lrp": 26.8, "lrp_ab": 18.8, "fullgrad": 32.1,
                       "gradcam": 37.8, "rap": 38.7, "clrp": 29.8, "sglrp": 29.9, "agf": 38.9},
         "target": {"integrated_gradients": 10.5, "smoothgrad": 12.1, "lrp": 26.8, "lrp_ab": 18.8, "fullgrad": 32.4,
                    "gradcam": 39.4, "rap": 38.7, "clrp": 31.6, "sglrp": 32.4, "agf": 40.0}}


def parse_args(argv: Sequence[str] | None) -> Any:
    """Options: the harness's common ones, --model, --methods, --order, --imagenet-val (+ labels file)."""
    p = harness.experiment_parser(__doc__)
    se.add_model_option(p)
    se.add_methods_option(p, se.TABLE2_METHODS)
    p.add_argument("--order", choices=("negative", "positive"), default="negative",
                   help="negative: least relevant pixels removed first (the paper's Table 2); positive: most relevant")
    p.add_argument("--imagenet-val", type=Path, default=None,
                   help="ImageNet validation folder (ImageFolder layout, or flat with --imagenet-val-labels)")
    p.add_argument("--imagenet-val-labels", type=Path, default=None, help="label file of a flat validation folder")
    return p.parse_args(argv)


def dataset(args: Any) -> tuple[Any, str]:
    """The evaluated images and a description of them."""
    if args.imagenet_val is not None:
        from sslx.data.imagenet import ImageNetVal

        return ImageNetVal(args.imagenet_val, args.imagenet_val_labels), f"ImageNet val ({args.imagenet_val})"
    if args.imagenet_val_labels is not None:
        raise ValueError("--imagenet-val-labels needs --imagenet-val")
    return se.scene_dataset("single", args.seed), "single-object test scenes of the sslx benchmark (128×128)"


def markdown(summary: dict[str, Any], methods: Sequence[str], args: Any, data_name: str, n: int,
             clean: float) -> str:
    """The results table beside the paper's numbers, and the conventions."""
    header = ["", *[se.LABELS[m] for m in methods]]
    rows: list[list[Any]] = []
    if args.order == "negative":
        rows += [[f"paper, {v} (VGG-19, ImageNet val)", *[PAPER[v].get(m) for m in methods]] for v in VARIANTS]
    for v in VARIANTS:
        rows.append([f"**ours, {v}**", *[harness.with_ci(summary[m][v], "auc") for m in methods]])
    better = "higher" if args.order == "negative" else "lower"
    return (
        f"# Table 2 — {args.order} perturbation AUC ({better} is better)\n\n"
        + harness.markdown_table(header, rows)
        + f"\n**Data differ from the paper.** Ours: {data_name}, first n = {n} images, model `{args.model}` "
          f"(clean top-1 accuracy {clean:.1f} %). The paper: VGG-19 on the 50 000 ImageNet validation images. "
          "Only the ranking of methods can be compared, not the values.\n\n"
          "Conventions: on the [0, 1] image the int(H·W·p) pixels ranked first by the map are set to 0 (all channels), "
          f"for p = {', '.join(f'{p:g}' for p in se.DEFAULT_FRACTIONS)}; the image is normalised again and classified. "
          f"Order: {args.order} ({'lowest' if args.order == 'negative' else 'highest'} map values first; stable ties, "
          "row-major). 'predicted': the map explains the clean top-1 class and a perturbed image counts as correct when "
          "its top-1 is still that class; 'target': the map explains the label and correctness is against the label. "
          "AUC = trapezoid of accuracy (%) over p ∈ [0.1, 0.9], p = 0 not included (a constant 100 % scores 80). "
          "Methods run with sslx's defaults (the authors' "
          "baseline semantics); IG 100 steps, SmoothGrad 50 samples. Full curves: the JSON file and "
          f"`table2{'' if args.order == 'negative' else '_positive'}_curves.png` (the paper's Fig. 3).\n\n"
        + harness.CI_NOTE + " `auc_se` in the JSON is the standard deviation of the per-image AUCs / √n.\n"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the perturbation test for every method and write the results files; returns the JSON data."""
    args = parse_args(argv)
    harness.setup(args)
    methods = se.parse_methods(args.methods, (*se.TABLE2_METHODS, *se.VIT_METHODS))
    data, data_name = dataset(args)
    mean, std = se.normalisation(data)
    n_images = args.n_images or DEFAULT_N_IMAGES
    explainers = se.Explainers(se.load_model(args.model), se.method_factories(methods))
    scorer = se.PerturbationScorer(explainers, VARIANTS, args.order, mean, std)
    rows = harness.run_predict(scorer, se.make_loader(data, n_images, args.batch_size), args)
    summary = se.perturbation_summary(rows, methods, VARIANTS)
    n = int(rows["ids"].numel())
    clean = float(rows["clean_correct"].double().mean() * 100)
    result = {"table": "2", "order": args.order, "model": args.model, "data": data_name, "n_images": n,
              "clean_accuracy": clean, "fractions": list(se.DEFAULT_FRACTIONS), "methods": summary,
              "paper": PAPER if args.order == "negative" else None,
              "conventions": {"auc": "trapezoid of accuracy (%) over p = 0.1..0.9, p = 0 excluded (constant 100 % → 80)",
                              "removal": "int(H*W*p) pixels set to 0 on the [0,1] image, stable row-major ties",
                              "auc_se": "std of per-image AUCs / sqrt(n)",
                              "ci95": "95 % percentile bootstrap over images (1000 resamples, seed 0) of the AUC"}}
    name = "table2" if args.order == "negative" else "table2_positive"
    figure = se.curves_figure(summary, VARIANTS, se.LABELS)
    harness.write_results(name, markdown(summary, methods, args, data_name, n, clean), result, args,
                          figures={"curves": figure})
    return result


if __name__ == "__main__":
    main()
