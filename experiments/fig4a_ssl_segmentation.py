"""Fig. 4a of the AGF paper: segmentation scores of SSL explanations, per SSL model and explanation method.

    python experiments/fig4a_ssl_segmentation.py                    # scan, sela, rotnet × 7 methods, 64 scenes
    python experiments/fig4a_ssl_segmentation.py --models rotnet --methods agf,gradcam --n-images 32
    python experiments/fig4a_ssl_segmentation.py --ssl-model SCAN=scan.pth --imagenet-seg gtsegs_ijcv.mat \
        --reference /data/imagenet/train --n-images 4276 --n-reference 50000

Real data: --imagenet-seg gives the query images and masks (the first --n-images entries of gtsegs_ijcv.mat),
resized to --image-size with the model's normalisation; S is --reference DIR (ImageFolder layout) or, by
default, the --n-reference entries of the same file right after the queries. The embedded models are
allowed on real images (with a warning: they were trained on 128-px scenes); use --ssl-model.

Each method explains, through Algorithm 2 with Δ, the SSL class t = arg-max head(L_I − L_N) on the unmodified
SSL network M, on single-object test scenes; the maps are scored against the object masks (pixel accuracy,
mAP — by default the AGF authors' binarised two-channel protocol, --map-protocol — and mIoU), each with a 95 %
bootstrap interval over images. Writes experiments/results/fig4a.{md,json} and fig4a_scatter.png.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import ssl_eval  # noqa: E402
import supervised_eval as se  # noqa: E402
from sslx.explain_api import METHODS as AVAILABLE  # noqa: E402
from sslx.neighbors import FeatureIndex  # noqa: E402

NAME = "fig4a"
DEFAULT_N_IMAGES = 64
MODELS = ("scan", "sela", "rotnet")
METHODS = ("agf", "rap", "lrp", "gradcam", "fullgrad", "clrp", "sglrp")
TOO_SLOW = ("integrated_gradients", "smoothgrad")
MARKERS = {"agf": "*", "rap": "o", "lrp": "s", "gradcam": "^", "fullgrad": "v", "clrp": "D", "sglrp": "P",
           "integrated_gradients": "X", "smoothgrad": "h", "lrp_ab": "<", "gradient_shap": ">"}
MODE = "delta"
METRICS = ("pixel_accuracy", "mAP", "mIoU")


def parse_args(argv: Sequence[str] | None) -> Any:
    """Options: the harness's common ones, --models, --methods, --n-reference."""
    p = ssl_eval.experiment_parser(__doc__)
    p.add_argument("--models", default=None, help=f"embedded SSL models (default: {','.join(MODELS)})")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"explanation methods (default: {','.join(METHODS)}; {', '.join(TOO_SLOW)} are left out by "
                   "default for their CPU cost)")
    ssl_eval.add_real_data_options(p)
    p.add_argument("--imagenet-seg", type=Path, default=None, metavar="FILE",
                   help="ImageNet-Segmentation gtsegs_ijcv.mat: images and masks instead of the test scenes")
    se.add_map_protocol_option(p)
    return p.parse_args(argv)


def index_and_queries(model: nn.Module, args: Any) -> tuple[FeatureIndex, Any]:
    """The FAISS index over S and the query batches (ImageNet-Seg entries, or the test scenes)."""
    queries = None
    if args.imagenet_seg is not None:
        queries = ssl_eval.imagenet_segmentation(args.imagenet_seg, model, args.image_size)
    return ssl_eval.index_and_queries(queries, model, args, "--imagenet-seg")


def data_description(args: Any, n_images: int | None = None) -> tuple[str, str]:
    """(queries, reference S) in words, for the results file; `n_images` = how many queries were evaluated."""
    return ssl_eval.describe_data(args, args.imagenet_seg, "entries", n_images)


class SSLSegmentationScorer(nn.Module):
    """Per image: the Δ SSL class, its neighbour and, per method, the segmentation counts of the map vs mask > 0."""

    def __init__(self, model: nn.Module, index: FeatureIndex, methods: Sequence[str], protocol: str = "authors",
                 explain_model: str = "unmodified") -> None:
        super().__init__()
        self.model, self.index, self.methods = model, index, tuple(methods)
        self.protocol, self.explain_model = protocol, explain_model

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        x, masks = batch["image"], batch["mask"]
        rows: dict[str, Tensor] = {"ids": batch["index"]}
        for method in self.methods:
            explanation = ssl_eval.explain(self.model, x, self.index, MODE, method, self.explain_model)
            maps, threshold = explanation.heatmaps, se.threshold_for(method)
            for key, value in se.segmentation_rows(maps, masks, threshold, self.protocol).items():
                rows[f"{method}|{key}"] = value
        rows["class"], rows["neighbor"] = explanation.ssl_class, explanation.neighbor_ids[:, 0]
        rows["foreground"] = (masks > 0).flatten(1).double().mean(dim=1)
        return rows


def evaluate_model(model: nn.Module, args: Any) -> dict[str, Any]:
    """Index S, explain the test scenes with every method, score the maps against the masks."""
    index, data = index_and_queries(model, args)
    scorer = SSLSegmentationScorer(model, index, args.methods, args.map_protocol, args.explain_model)
    rows = harness.run_predict(scorer, data, args)
    classes = rows["class"]
    return {"scores": se.segmentation_summary(rows, args.methods), "image_ids": rows["ids"].tolist(),
            "ssl_class": classes.tolist(), "neighbor_ids": rows["neighbor"].tolist(),
            "head_classes": int(model.head.out_features), "n_reference": len(index), "distinct_classes": int(classes.unique().numel()),
            "foreground_fraction": 100.0 * float(rows["foreground"].mean())}


def scatter_figure(results: Mapping[str, Any], methods: Sequence[str]) -> Figure:
    """Pixel accuracy (x) vs mAP (y): colour = SSL model, marker = method (the paper's Fig. 4a layout)."""
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (name, r) in enumerate(results.items()):
        for method in methods:
            s = r["scores"][method]
            ax.scatter(s["pixel_accuracy"], s["mAP"], color=f"C{i}", marker=MARKERS.get(method, "o"),
                       s=110 if method == "agf" else 45, edgecolors="black", linewidths=0.4)
    for i, name in enumerate(results):
        ax.scatter([], [], color=f"C{i}", marker="o", label=ssl_eval.display(name))
    for method in methods:
        ax.scatter([], [], color="grey", marker=MARKERS.get(method, "o"), label=se.LABELS.get(method, method))
    ax.set_xlabel("pixel accuracy (%)")
    ax.set_ylabel("mAP (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("SSL explanations (Algorithm 2, Δ) vs object masks")
    return fig


def markdown(results: Mapping[str, Any], args: Any) -> str:
    """Scores per model and method, the class explained, conventions."""
    rows = [[ssl_eval.display(n), se.LABELS.get(m, m), *[harness.with_ci(r["scores"][m], k) for k in METRICS],
             "0" if se.threshold_for(m) == 0.0 else "mean"]
            for n, r in results.items() for m in args.methods]
    classes = [[ssl_eval.display(n), r["head_classes"], r["distinct_classes"], r["foreground_fraction"]]
               for n, r in results.items()]
    left_out = [m for m in TOO_SLOW if m not in args.methods]
    n_images = next(iter(results.values()))["scores"][args.methods[0]]["n_images"]
    queries, reference = data_description(args, n_images)
    real = args.imagenet_seg is not None or args.reference is not None
    return (
        "# Fig. 4a — segmentation by SSL explanations\n\n"
        "Generated by `experiments/fig4a_ssl_segmentation.py`; the scatter plot is `fig4a_scatter.png` "
        "(x = pixel accuracy, y = mAP, colour = model, marker = method). All scores in %.\n\n"
        f"## Ours ({'checkpoints ' + ', '.join(results) if args.ssl_model else 'embedded SSL models'}, {queries})\n\n"
        + harness.markdown_table(["model", "method", "pixel accuracy", "mAP", "mIoU", "threshold"], rows)
        + "\nThe paper gives Fig. 4a only as a plot (ImageNet-Segmentation, SCAN and SeLa ResNet-50, RotNet AlexNet); "
          "its text states that AGF beats every baseline in both mAP and pixel accuracy for every model, except "
          "RotNet, where AGF's mAP is considerably better and its pixel accuracy slightly lower. Our models and data "
          + ("differ (small models trained on the procedural scenes, docs/benchmark.md).\n\n" if not args.ssl_model
             else f"come from the --ssl-model checkpoints {', '.join(args.ssl_model)}.\n\n")
        + "## What is explained\n\n"
        "The SSL models have no head for the scene classes (nor for ImageNet's), so — unlike the paper's wording "
        "\"the ImageNet ground truth class\" — every map here explains the **SSL class chosen by Algorithm 2 with "
        "Δ**: t = arg-max head(L_I − L_N) (a SeLa/SCAN cluster, or a RotNet rotation), "
        + ("on the unmodified SSL network M (Algorithm 2, line 7). " if args.explain_model == "unmodified" else
           "on the combined model head(backbone(·) − L_N) (`--explain-model combined`, not the paper's). ")
        + "The ground truth enters only through the masks: a good explanation of whatever the network decided should "
        "still lie on the object. The scene classes are never used.\n\n"
        + harness.markdown_table(["model", "head classes", "distinct classes chosen", "object pixels (%)"], classes)
        + "\n*object pixels* = mean fraction f of the image covered by the object: 100 − f is the pixel accuracy of "
          "an all-background prediction (whose authors'-protocol AP is a² + (1 − a)/2 with a = 1 − f), and f the "
          "per_image_raw mAP a random map would get in expectation.\n\n"
        "## Conventions\n\n"
        + (ssl_eval.real_conventions(queries, reference, args.explain_model) if real
           else ssl_eval.reference_conventions(args.n_reference, args.explain_model))
        + "- Foreground = mask > 0 (the single object). A pixel is predicted foreground when the map is above "
          "the threshold: 0 for the signed methods (AGF, RAP, CLRP, SGLRP, LRP-αβ, Gradient SHAP), the per-image "
          "mean for non-negative maps (LRP, Grad-CAM, FullGrad, IG, SmoothGrad) — supervised_eval.threshold_for, "
          "as in Table 3.\n"
          "- Pixel accuracy and mIoU (mean of background and foreground IoU) are dataset-level (counts summed over "
          "all images). " + se.MAP_PROTOCOLS[args.map_protocol] + "\n"
          f"- {harness.CI_NOTE}\n"
          "- Maps: `sslx.explain` defaults; Grad-CAM reads the output of the backbone's last convolutional stage "
          "(conv5 for the AlexNets, layer4 for SCAN's ResNet).\n"
        + (f"- Left out by default: {', '.join(left_out)} (each costs tens of forward/backward passes per image, "
           "several times all the other methods together on 2 CPU cores); run them with `--methods`.\n"
           if left_out else "")
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the experiment and write fig4a.{md,json} and fig4a_scatter.png; returns the JSON data."""
    clock = ssl_eval.Stopwatch()
    args = parse_args(argv)
    models = ssl_eval.model_loaders(args.models, args.ssl_model, MODELS)
    real = args.imagenet_seg is not None or args.reference is not None
    if args.image_size is not None and not real:
        raise ValueError("--image-size applies to real images only (--imagenet-seg, --reference)")
    ssl_eval.warn_if_embedded_on_real_data(list(models), args.ssl_model, real)
    args.methods = ssl_eval.name_list(args.methods, sorted(AVAILABLE), "--methods")
    args.n_images = args.n_images or DEFAULT_N_IMAGES
    ssl_eval.check_reference(args.n_reference)
    harness.setup(args)
    queries, reference = data_description(args)
    results = ssl_eval.for_each_model(models, lambda name, model: evaluate_model(model, args))
    data = {"models": results,
            "settings": {"n_images": args.n_images, "n_reference": args.n_reference, "metric": ssl_eval.METRIC,
                         "factory": ssl_eval.FACTORY, "k": ssl_eval.K, "mode": MODE, "methods": list(args.methods),
                         "objects": "single", "queries": queries,
                         "reference": reference, "ssl_models": list(args.ssl_model),
                         "thresholds": {m: se.threshold_for(m) for m in args.methods},
                         "map_protocol": args.map_protocol, "explain_model": args.explain_model},
            "conventions": {"map": se.MAP_PROTOCOLS[args.map_protocol], "ci95": harness.CI_NOTE},
            "time": clock.read()}
    harness.write_results(NAME, markdown(results, args), data, args,
                          {"scatter": scatter_figure(results, args.methods)})
    return data


if __name__ == "__main__":
    main()
