"""Table 5 of the AGF paper: AGF without each of its parts, negative perturbation AUC (predicted class).

    python experiments/table5_ablation.py                  # embedded VGG on single-object test scenes
    python experiments/table5_ablation.py --model resnet
    python experiments/table5_ablation.py --imagenet-val /data/imagenet/val --model torchvision:vgg19

Writes experiments/results/table5.{md,json} and table5_curves.png.
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
import table2_perturbation as table2  # noqa: E402

DEFAULT_N_IMAGES = 128
VARIANTS = ("predicted",)
# name → (column label, sslx.AGF switches; None = RAP, the reference line)
ABLATIONS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "full": ("Ours (full AGF)", {}),
    "only_c": ("Only C", {"residual": "none"}),
    "no_a": ("without A", {"use_a": False}),
    "no_fx": ("without F_x", {"use_fx": False}),
    "no_fgrad": ("without F_∇x", {"use_fgrad": False}),
    "no_m": ("without M", {"use_m": False}),
    "no_gate": ("without (1+e^(−C))⁻¹", {"use_gate": False}),
    "gradcam_residual": ("r = Grad-CAM", {"residual": "gradcam"}),
    "rap": ("RAP (reference)", None),
}
PAPER = {"full": 38.9, "only_c": 38.2, "no_a": 34.6, "no_fx": 37.5, "no_fgrad": 37.1, "no_m": 37.2, "no_gate": 37.5,
         "gradcam_residual": 37.1, "rap": 38.7}


def factories() -> dict[str, se.Factory]:
    """name → factory(model) for every ablation and the RAP reference."""
    from sslx import AGF
    from sslx.attribution.rap import RAP

    return {name: (RAP if switches is None else (lambda model, s=switches: AGF(model, **s)))
            for name, (_, switches) in ABLATIONS.items()}


def add_paired_differences(summary: dict[str, Any], rows: dict[str, Any], names: Sequence[str]) -> None:
    """summary[name]["predicted_minus_full"] = AUC(name) − AUC(full AGF), with a paired bootstrap interval over images."""
    from sslx.metrics import mean_interval

    grid = torch.tensor(se.DEFAULT_FRACTIONS, dtype=torch.float64)

    def per_image(name: str) -> torch.Tensor:
        return torch.trapezoid(rows[f"{name}|predicted"].double() * 100.0, grid, dim=1)

    full = per_image("full")
    for name in names:
        difference = per_image(name) - full
        summary[name]["predicted_minus_full"] = {
            "auc": summary[name]["predicted"]["auc"] - summary["full"]["predicted"]["auc"],
            "ci95": {"auc": list(mean_interval(difference))}, "n": {"auc": int(difference.numel())}}


def markdown(summary: dict[str, Any], args: Any, data_name: str, n: int, clean: float) -> str:
    """The ablation table beside the paper's numbers, and the conventions."""
    names = list(ABLATIONS)
    header = ["", *[ABLATIONS[k][0] for k in names]]
    differences = [summary[k]["predicted_minus_full"] for k in names]
    rows = [["paper (VGG-19, ImageNet val)", *[PAPER[k] for k in names]],
            ["**ours**", *[harness.with_ci(summary[k]["predicted"], "auc") for k in names]],
            ["ours − full AGF", *[harness.with_ci(difference, "auc") for difference in differences]]]
    return (
        "# Table 5 — AGF ablations, negative perturbation AUC, predicted class (higher is better)\n\n"
        + harness.markdown_table(header, rows)
        + f"\n**Data differ from the paper.** Ours: {data_name}, first n = {n} images, model `{args.model}` "
          f"(clean top-1 accuracy {clean:.1f} %); the paper: VGG-19 on ImageNet validation. The paper's RAP value is "
          "its Table 2 number, which Table 5's text refers to.\n\n"
          "Ablations (`sslx.AGF` switches, acting inside the full-AGF convolutions only; "
          "agf_reference_semantics.md \"Ablations\"): only C = `residual=\"none\"` (r = 0, Φ = C); without A / F_x / "
          "F_∇x / M = `use_a` / `use_fx` / `use_fgrad` / `use_m` = False; without the sigmoid gate = `use_gate=False`; "
          "r = Grad-CAM = `residual=\"gradcam\"`.\n\n"
          "Conventions as Table 2: the map explains the clean top-1 class; the least relevant int(H·W·p) pixels of the "
          "[0, 1] image are set to 0 for p = 0.1…0.9; AUC = trapezoid of top-1 agreement with the clean prediction (%) "
          "over p ∈ [0.1, 0.9] (p = 0 excluded; constant 100 % → 80). The differences to full AGF are paired (same "
          "images): their intervals resample the per-image differences, so they are narrower than the two AUCs' "
          "intervals suggest. Curves: JSON and `table5_curves.png`.\n\n" + harness.CI_NOTE + "\n"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the ablations' perturbation tests and write the results files; returns the JSON data."""
    p = harness.experiment_parser(__doc__)
    se.add_model_option(p)
    p.add_argument("--imagenet-val", type=Path, default=None, help="ImageNet validation folder")
    p.add_argument("--imagenet-val-labels", type=Path, default=None, help="label file of a flat validation folder")
    args = p.parse_args(argv)
    args.order = "negative"
    harness.setup(args)
    data, data_name = table2.dataset(args)
    mean, std = se.normalisation(data)
    explainers = se.Explainers(se.load_model(args.model), factories())
    scorer = se.PerturbationScorer(explainers, VARIANTS, "negative", mean, std)
    rows = harness.run_predict(scorer, se.make_loader(data, args.n_images or DEFAULT_N_IMAGES, args.batch_size), args)
    summary = se.perturbation_summary(rows, list(ABLATIONS), VARIANTS)
    add_paired_differences(summary, rows, list(ABLATIONS))
    n = int(rows["ids"].numel())
    clean = float(rows["clean_correct"].double().mean() * 100)
    result = {"table": "5", "model": args.model, "data": data_name, "n_images": n, "clean_accuracy": clean,
              "fractions": list(se.DEFAULT_FRACTIONS), "methods": summary, "paper": PAPER,
              "switches": {k: v[1] for k, v in ABLATIONS.items()},
              "conventions": {"auc": "trapezoid of accuracy (%) over p = 0.1..0.9, p = 0 excluded (constant 100 % → 80)",
                              "variant": "predicted class (map explains and accuracy counts the clean top-1)",
                              "ci95": harness.CI_NOTE}}
    labels = {k: v[0] for k, v in ABLATIONS.items()}
    harness.write_results("table5", markdown(summary, args, data_name, n, clean), result, args,
                          figures={"curves": se.curves_figure(summary, VARIANTS, labels)})
    return result


if __name__ == "__main__":
    main()
