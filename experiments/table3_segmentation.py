"""Table 3 of the AGF paper: segmentation by explanations, (a) ImageNet-Segmentation analog, (b) VOC analog.

    python experiments/table3_segmentation.py                      # both parts on the embedded benchmark
    python experiments/table3_segmentation.py --imagenet-seg gtsegs_ijcv.mat --model torchvision:vgg19
    python experiments/table3_segmentation.py --voc /data/VOC --multilabel-model voc_multilabel.pth

(a) single-object scenes; the map explains the top-predicted class; foreground = the object mask.
(b) two-object scenes of two different classes, a multi-label classifier (experiments/train_multilabel.py):
every class with sigmoid > 0.5 is explained and a (K+1)-channel score map is scored against the class mask.
With real data paths only the parts given run. Writes experiments/results/table3.{md,json} and table3_examples.png.
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
PAPER = {"imagenet": {"pixel_accuracy": {"gradient_shap": 49.9, "meaningful_perturbation": 29.6,
                                         "integrated_gradients": 72.7, "smoothgrad": 70.1, "lrp": 74.9, "lrp_ab": 29.6,
                                         "fullgrad": 75.8, "gradcam": 66.5, "rap": 78.8, "clrp": 53.3, "sglrp": 54.5,
                                         "agf": 79.9},
                      "mAP": {"gradient_shap": 50.0, "meaningful_perturbation": 45.4, "integrated_gradients": 67.4,
                              "smoothgrad": 65.1, "lrp": 69.9, "lrp_ab": 47.5, "fullgrad": 70.6, "gradcam": 62.4,
                              "rap": 73.7, "clrp": 54.6, "sglrp": 55.1, "agf": 76.7}},
         "voc": {"pixel_accuracy": {"gradient_shap": 9.3, "meaningful_perturbation": 10.2, "integrated_gradients": 70.1,
                                    "smoothgrad": 69.9, "lrp": 66.6, "lrp_ab": 70.8, "fullgrad": 26.9, "gradcam": 52.6,
                                    "rap": 72.8, "clrp": 72.8, "sglrp": 73.1, "agf": 77.5},
                 "mAP": {"gradient_shap": 35.2, "meaningful_perturbation": 22.7, "integrated_gradients": 34.9,
                         "smoothgrad": 34.3, "lrp": 40.8, "lrp_ab": 37.0, "fullgrad": 19.7, "gradcam": 41.7,
                         "rap": 39.6, "clrp": 37.9, "sglrp": 32.6, "agf": 45.9}}}
RULES = (
    "Foreground rule: signed maps (Gradient SHAP, LRP αβ, RAP, CLRP, SGLRP, AGF) → positive part (> 0); "
    "non-negative maps (Int. Grad — Σ_c|·| as in the authors' baseline —, Smooth Grad, LRP, Full Grad, Grad-CAM) → "
    "above the map's per-image mean. Pixel accuracy and mIoU are dataset-level (Σ over all pixels); all in %."
)
MULTILABEL_RULE = (
    "VOC-analog rule (our reading of the authors' VOC protocol; agf_reference_semantics.md, last lines): the "
    "multi-label classifier's classes with sigmoid > 0.5 are explained one by one. Each map becomes class evidence "
    "e = (map − τ)₊ / max (map − τ)₊ ∈ [0, 1] with τ as the foreground rule above (0 signed, mean non-negative). "
    "Score map with K+1 channels: background = 0, chosen class = e, unchosen class = −0.1 (the authors subtract 0.1 "
    "from unpredicted classes before a softmax). Per pixel the label is the argmax over channels (ties → background): "
    "background unless a chosen class's map is above its threshold, and the larger normalised evidence wins where "
    "two maps overlap. Pixel accuracy = Σ correct / Σ non-ignored pixels (255 ignored on VOC); mAP = mean over images "
    "of the micro average precision of softmax(scores) over all (channel, pixel) pairs against the one-hot truth; "
    "mIoU = mean over the labels present of the dataset-level IoU (background included). The authors' background "
    "channel content is not documented; we use 0."
)


def parse_args(argv: Sequence[str] | None) -> Any:
    """Options: common ones, --model, --multilabel-model, --methods, --imagenet-seg, --voc (+ split, size)."""
    p = harness.experiment_parser(__doc__)
    se.add_model_option(p, what="part (a)'s classifier")
    p.add_argument("--multilabel-model", default=None,
                   help="part (b)'s multi-label classifier (sslx checkpoint; default: the embedded "
                        f"ssl_models/assets/{se.MULTILABEL_ASSET}; required with --voc)")
    se.add_methods_option(p, se.TABLE3_METHODS)
    p.add_argument("--imagenet-seg", type=Path, default=None, help="ImageNet-Segmentation gtsegs_ijcv.mat")
    p.add_argument("--voc", type=Path, default=None, help="PASCAL VOC 2012 root (torchvision layout)")
    p.add_argument("--voc-split", default="val")
    p.add_argument("--image-size", type=int, default=224, help="resolution of the real datasets' images")
    p.add_argument("--part", choices=("all", "a"), default="all",
                   help="all: parts (a) and (b); a: only the single-label part (e.g. --model vit, which has no "
                        "multi-label counterpart)")
    se.add_map_protocol_option(p, "(a)")
    return p.parse_args(argv)


def part_datasets(args: Any) -> dict[str, tuple[Any, str]]:
    """{'imagenet': (dataset, description), 'voc': (...)} for the parts that run."""
    real = args.imagenet_seg is not None or args.voc is not None
    parts: dict[str, tuple[Any, str]] = {}
    if args.imagenet_seg is not None:
        from sslx.data.imagenet_seg import ImageNetSegmentation

        parts["imagenet"] = (ImageNetSegmentation(args.imagenet_seg, args.image_size),
                             f"ImageNet-Segmentation ({args.imagenet_seg})")
    elif not real:
        parts["imagenet"] = (se.scene_dataset("single", args.seed), "single-object test scenes (128×128)")
    if args.voc is not None:
        from sslx.data.voc import VOCSegmentation2012

        if args.multilabel_model is None:
            raise ValueError("--voc needs --multilabel-model (a multi-label classifier of the 20 VOC classes)")
        parts["voc"] = (VOCSegmentation2012(args.voc, args.voc_split, args.image_size),
                        f"PASCAL VOC 2012 {args.voc_split} ({args.voc})")
    elif not real and args.part == "all":
        parts["voc"] = (se.scene_dataset("pair", args.seed), "two-object test scenes, two different classes (128×128)")
    return parts


def multilabel_model_path(args: Any) -> str:
    """The part (b) classifier: --multilabel-model or the embedded multi-label VGG."""
    from sslx.assets import assets_dir

    path = args.multilabel_model or str(assets_dir() / se.MULTILABEL_ASSET)
    if not Path(path).is_file():
        raise FileNotFoundError(f"multi-label classifier {path} not found; create it with "
                                "`python experiments/train_multilabel.py`")
    return path


def markdown(results: dict[str, Any], methods: Sequence[str], args: Any) -> str:
    """Both parts' tables beside the paper's numbers, and the rules."""
    header = ["", *[se.LABELS[m] for m in methods]]
    text = "# Table 3 — segmentation by explanations (higher is better)\n\n"
    for part, title in (("imagenet", "(a) ImageNet-Segmentation analog"), ("voc", "(b) PASCAL-VOC 2012 analog")):
        if part not in results:
            continue
        res = results[part]
        rows: list[list[Any]] = []
        for metric, label in (("pixel_accuracy", "Pixel Acc."), ("mAP", "mAP"), ("mIoU", "mIoU")):
            if metric in PAPER[part]:
                rows.append([f"paper {label}", *[PAPER[part][metric].get(m) for m in methods]])
            rows.append([f"**ours {label}**", *[harness.with_ci(res["methods"][m], metric) if m in res["methods"]
                                                 else None for m in methods]])
        text += (f"## {title}\n\n" + harness.markdown_table(header, rows)
                 + f"\nOurs: {res['data']}, first n = {res['n_images']} images, model `{res['model']}`. "
                 + res["note"] + "\n\n")
    text += ("**Data differ from the paper** (VGG-19 on ImageNet-Segmentation, 4 276 images; a multi-label VGG-19 on "
             "VOC 2012): compare rankings, not values. Meaningful Perturbation is not implemented in sslx (\"–\"). "
             "mIoU is an extra column the paper does not report.\n\n" + RULES + " (a): " + se.MAP_PROTOCOLS[args.map_protocol]
             + "\n\n" + MULTILABEL_RULE + "\n\n" + harness.CI_NOTE + "\n")
    return text


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the parts that apply and write the results files; returns the JSON data."""
    args = parse_args(argv)
    harness.setup(args)
    methods = se.parse_methods(args.methods, (*se.TABLE3_METHODS, *se.VIT_METHODS))
    implemented = [m for m in methods if m not in se.NOT_IMPLEMENTED]
    n_images = args.n_images or DEFAULT_N_IMAGES
    results: dict[str, Any] = {}
    for part, (data, data_name) in part_datasets(args).items():
        loader = se.make_loader(data, n_images, args.batch_size)
        if part == "imagenet":
            explainers = se.Explainers(se.load_model(args.model), se.method_factories(implemented))
            rows = harness.run_predict(se.SegmentationScorer(explainers, args.map_protocol), loader, args)
            scores = se.segmentation_summary(rows, implemented)
            model_name, note = args.model, "The map explains the top-1 predicted class; foreground = mask > 0."
        else:
            model_name = multilabel_model_path(args)
            model = se.load_model(model_name)
            if se.num_outputs(model) != data.num_classes:
                raise ValueError(f"the multi-label classifier {model_name} has {se.num_outputs(model)} outputs but "
                                 f"the data have {data.num_classes} classes")
            explainers = se.Explainers(model, se.method_factories(implemented))
            rows = harness.run_predict(se.MultiLabelSegmentationScorer(explainers), loader, args)
            scores = se.multilabel_summary(rows, implemented)
            chosen = rows["n_chosen"].double()
            exact = float(rows["exact_set"].double().mean() * 100) if "exact_set" in rows else None
            model_name = Path(model_name).name if args.multilabel_model is None else model_name
            note = (f"Classes explained per image (sigmoid > 0.5): mean {float(chosen.mean()):.2f}, "
                    f"none in {int((chosen == 0).sum())} images; the chosen set equals the true set in "
                    f"{exact if exact is not None else float('nan'):.1f} % of the images. {data.num_classes + 1} "
                    "channels (background + classes).")
        results[part] = {"data": data_name, "model": model_name, "n_images": int(rows["ids"].numel()),
                         "methods": scores, "note": note}
    data = {"table": "3", "parts": results, "paper": PAPER, "not_implemented": sorted(se.NOT_IMPLEMENTED),
            "map_protocol": args.map_protocol,
            "conventions": {"binary": RULES, "map": se.MAP_PROTOCOLS[args.map_protocol], "multilabel": MULTILABEL_RULE,
                            "ci95": harness.CI_NOTE}}
    harness.write_results("table3", markdown(results, methods, args), data, args)
    return data


if __name__ == "__main__":
    main()
