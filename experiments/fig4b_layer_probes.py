"""Fig. 4b of the AGF paper: AGF segmentation per layer of the RotNet AlexNet, through supervised linear probes.

    python experiments/fig4b_layer_probes.py                        # RotNet conv1…conv5, about 5 min on 2 cores
    python experiments/fig4b_layer_probes.py --train-images 4000 --epochs 5 --n-images 256

For every layer the probe job (`sslx.probe`, its own Lightning Trainer) trains a linear probe on the frozen
layer, explains the probe's ground-truth class with AGF on held-out single-object scenes and scores the maps
against the object masks. Writes experiments/results/fig4b.{md,json} and fig4b_layers.png.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import ssl_eval  # noqa: E402
import supervised_eval as se  # noqa: E402
from sslx.probe.run import ProbeConfig, ProbeJob  # noqa: E402

NAME = "fig4b"
DEFAULTS = {"n_images": 128, "train_images": 1000, "val_images": 96, "epochs": 3}
PLOTTED = (("pixel_accuracy", "pixel accuracy"), ("mAP", "mAP"), ("mIoU", "mIoU"))


def parse_args(argv: Sequence[str] | None) -> Any:
    """Options: the harness's common ones (--n-images = held-out scenes explained) and the probe sizes."""
    p = harness.experiment_parser(__doc__)
    p.add_argument("--model", default="rotnet", help="embedded SSL model whose layers are probed (default: rotnet)")
    p.add_argument("--layers", default="all", help="comma-separated layers to probe, e.g. conv1,conv5 (default: all)")
    p.add_argument("--methods", default="agf", help="explanation methods scored per layer (default: agf)")
    p.add_argument("--train-images", type=int, default=DEFAULTS["train_images"],
                   help=f"single-object train scenes each probe is fit on (default {DEFAULTS['train_images']})")
    p.add_argument("--val-images", type=int, default=DEFAULTS["val_images"],
                   help=f"validation scenes for the probe accuracy curve (default {DEFAULTS['val_images']})")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"],
                   help=f"probe epochs (default {DEFAULTS['epochs']})")
    p.add_argument("--probe-out", type=Path, default=None,
                   help="keep the probe job's folder (probes, checkpoints, metrics.json) here; default: a temporary "
                   "folder deleted afterwards")
    return p.parse_args(argv)


def probe_config(args: Any, layer: str, out: Path) -> ProbeConfig:
    """The probe job's settings for one layer: our sizes and hardware, W&B left to write_results."""
    return ProbeConfig(layer=layer, model=args.model, epochs=args.epochs, max_images=args.train_images,
                       val_images=args.val_images, eval_images=args.n_images, eval_batch_size=args.batch_size,
                       methods=args.methods, out=str(out), wandb="disabled", accelerator=args.accelerator,
                       devices=str(args.devices), strategy=args.strategy, seed=args.seed, overlays=0, workers=0)


def run_probes(args: Any) -> dict[str, Any]:
    """Run the probe job once per layer; returns its results with every layer under "layers"."""
    keep = args.probe_out is not None
    out = Path(args.probe_out) if keep else Path(tempfile.mkdtemp(prefix="sslx_fig4b_"))
    merged: dict[str, Any] = {"layers": {}}
    try:
        for layer in args.layers:
            results = ProbeJob(probe_config(args, layer, out / layer)).run()
            merged = {**results, "layers": {**merged["layers"], **results["layers"]}}
    finally:
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    return merged


def resolve_layers(text: str, model_name: str) -> tuple[str, ...]:
    """--layers → layer names of the model, in the model's order ('all' = every probe-able layer)."""
    layers = tuple(ssl_eval.load_model(model_name).layers)
    return layers if text == "all" else tuple(n for n in layers if n in ssl_eval.name_list(text, layers, "--layers"))


def layers_figure(layers: Mapping[str, Any], method: str) -> Figure:
    """Per layer: the method's pixel accuracy, mAP and mIoU, and the probe's test accuracy (paper Fig. 4b)."""
    fig = Figure(figsize=(5.6, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = list(layers)
    for key, label in PLOTTED:
        ax.plot(names, [layers[n]["methods"][method][key] for n in names], marker="o",
                label=f"{se.LABELS.get(method, method)} {label}")
    ax.plot(names, [layers[n]["probe"]["test_accuracy"] for n in names], "k--", marker="s", label="probe accuracy")
    ax.set_xlabel("probed layer")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Linear probes on the RotNet AlexNet")
    return fig


def markdown(results: Mapping[str, Any], args: Any) -> str:
    """Per-layer table, the paper's claim, the protocol."""
    layers = results["layers"]
    rows = []
    for name, entry in layers.items():
        probe = entry["probe"]
        for method in args.methods:
            m = entry["methods"][method]
            rows.append([name, probe["num_features"], probe["train_accuracy"], probe["test_accuracy"],
                         se.LABELS.get(method, method), *[harness.with_ci(m, k) for k in ("pixel_accuracy", "mAP", "mIoU")],
                         harness.with_ci(m["perturbation_target"], "auc"),
                         harness.with_ci(m["perturbation_predicted"], "auc")])
    first = next(iter(layers.values()))
    conv = results["conventions"]
    return (
        "# Fig. 4b — explanations of per-layer linear probes (RotNet AlexNet)\n\n"
        "Generated by `experiments/fig4b_layer_probes.py` through the probe job `sslx.probe` "
        "(plot: `fig4b_layers.png`). All numbers in %.\n\n"
        f"## Ours (embedded {args.model}, {first['n_train_images']} train scenes per probe, {args.epochs} epochs, "
        f"{first['n_eval_images']} held-out scenes)\n\n"
        + harness.markdown_table(["layer", "probe features", "probe train acc.", "probe test acc.", "method",
                                  "pixel accuracy", "mAP", "mIoU", "neg. pert. AUC (target)",
                                  "neg. pert. AUC (predicted)"], rows)
        + "\nThe paper gives Fig. 4b only as a plot (RotNet AlexNet on ImageNet, probes of Asano et al.); its text "
          "states that AGF's segmentation performance increases with the layer index, in line with the probes' "
          "classification accuracy, which also increases with depth.\n\n"
        "## Protocol\n\n"
        f"- Probe: {conv['probe']}.\n"
        f"- Segmentation: {conv['segmentation']}. The explained class is the scene's ground-truth class (the "
        "probe's classes are the 12 scene classes), as the paper explains the ImageNet ground-truth class.\n"
        f"- Perturbation: {conv['perturbation']}.\n"
        "- Data: single-object scenes; train = the first N train scenes, validation/held-out = the first scenes of "
        "the val/test splits (`sslx.probe.data.scenes_datasets`; disjoint by construction).\n"
        f"- {harness.CI_NOTE} Probe accuracies have no interval.\n"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the probes and write fig4b.{md,json} and fig4b_layers.png; returns the JSON data."""
    clock = ssl_eval.Stopwatch()
    args = parse_args(argv)
    args.n_images = args.n_images or DEFAULTS["n_images"]
    args.methods = tuple(t.strip() for t in args.methods.split(",") if t.strip())
    args.layers = resolve_layers(args.layers, args.model)
    harness.setup(args)
    results = run_probes(args)
    data = {"layers": results["layers"], "conventions": results["conventions"], "data": results["data"],
            "splits": results.get("splits", {}),
            "settings": {"model": args.model, "train_images": args.train_images, "val_images": args.val_images,
                         "eval_images": args.n_images, "epochs": args.epochs, "methods": list(args.methods),
                         "layers": list(args.layers)},
            "time": clock.read()}
    harness.write_results(NAME, markdown(results, args), data, args,
                          {"layers": layers_figure(results["layers"], args.methods[0])})
    return data


if __name__ == "__main__":
    main()
