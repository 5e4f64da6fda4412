"""Model-parameter randomisation sanity check (Adebayo et al. 2018) of every method on every embedded model.

    python experiments/sanity_checks.py                      # 5 models × 11 methods, 16 test scenes
    python experiments/sanity_checks.py --models vgg --methods agf,gradcam --n-images 8

Cascading, top-down: step 1 redraws the head's parameters, steps 2-3 additionally the top 50 / 100 % of the
backbone's parameterised layers (sslx.metrics.parameter_randomisation; Gaussian with each tensor's
mean and std, seed 0). The map of the *original* model's top-1 class is recomputed on each randomised model
and compared with the original map: Spearman rank correlation of the maps and of their absolute values, and
SSIM. A method is flagged as failing when, after the head and the top half of the backbone are randomised,
the mean Spearman correlation of |maps| is still ≥ 0.5: its map does not depend on what those layers learned.
Writes experiments/results/sanity_checks.{md,json} and sanity_checks_curves.png.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import reviewer_common as rc  # noqa: E402
from sslx.metrics import parameter_randomisation  # noqa: E402

NAME = "sanity_checks"
DEFAULT_N_IMAGES = 16
SIMILARITIES = ("spearman", "spearman_abs", "ssim")
FLAG_STEP = 1  # head + top 50 % of the backbone
FLAG_THRESHOLD = 0.5


def steps(model: nn.Module) -> list[tuple[str, list[str]]]:
    """(label, layers newly randomised) per cascading step: the head, then halves of the backbone, top-down."""
    layers = rc.backbone_layers(model)
    out = [("head", [rc.head_name(model)])]
    done = 0
    for half in (1, 2):
        upto = round(len(layers) * half / 2)
        out.append((f"+{50 * half}% backbone", layers[done:upto]))
        done = upto
    return out


class RandomisationScorer(nn.Module):
    """Per image, method and step: similarities between original and randomised-model maps."""

    def __init__(self, model: nn.Module, methods: Sequence[str]) -> None:
        super().__init__()
        self.model, self.methods = model, tuple(methods)

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        x = batch["image"]
        with torch.no_grad():
            targets = self.model(x).argmax(dim=1)
        rows: dict[str, Tensor] = {"ids": batch["index"]}
        groups = [g for _, g in steps(self.model)]
        for method in self.methods:
            out = parameter_randomisation(self.model, rc.Explainer(method), x, targets, "cascading", groups, seed=0)
            for k, step in enumerate(out):
                for sim in SIMILARITIES:
                    rows[f"{method}|{k}|{sim}"] = step[sim]
        return rows


def evaluate(name: str, methods: Sequence[str], args: Any) -> dict[str, Any]:
    """Randomisation curves of every method on model `name`, with CIs and flags."""
    clock = rc.Stopwatch()
    model = rc.load_model(name)
    labels = [label for label, _ in steps(model)]
    rows = harness.run_predict(RandomisationScorer(model, methods), rc.data_loader(model, args.n_images,
                                                                                 args.batch_size, args.seed), args)
    out: dict[str, Any] = {"steps": labels, "methods": {}}
    for method in methods:
        entry = {sim: [rc.summary(rows[f"{method}|{k}|{sim}"]) for k in range(len(labels))] for sim in SIMILARITIES}
        survives = entry["spearman_abs"][FLAG_STEP]["mean"]
        entry["fails_randomisation"] = bool(survives >= FLAG_THRESHOLD)
        out["methods"][method] = entry
    out["n_images"] = int(rows["ids"].numel())
    out["time"] = clock.read()
    print(f"[{name}] {out['time']}", flush=True)
    return out


def figure(results: Mapping[str, Any], methods: Sequence[str]) -> Figure:
    """Mean Spearman of |maps| per cascading step, one panel per model, one line per method."""
    fig = Figure(figsize=(4.2 * len(results), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    colours = matplotlib.colormaps["tab20"].colors[::2] + matplotlib.colormaps["tab20"].colors[1::2]
    lowest = min((s["mean"] for res in results.values() for method in methods
                  for s in res["methods"][method]["spearman_abs"] if s["mean"] is not None), default=0.0)
    for ax, (name, res) in zip(axes, results.items()):
        for i, method in enumerate(methods):  # a colour and a marker per method, the same in every panel
            ys = [s["mean"] for s in res["methods"][method]["spearman_abs"]]
            ax.plot(range(len(ys)), ys, marker="osD^v<>ph*X"[i % 11], markersize=4, color=colours[i % len(colours)],
                    label=rc.LABELS.get(method, method))
        ax.axhline(FLAG_THRESHOLD, color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(res["steps"])), res["steps"], rotation=35, ha="right", fontsize=7)
        ax.set_title(name)
        ax.set_ylim(min(-0.2, lowest - 0.05), 1.05)  # every value visible
        ax.set_ylabel("Spearman ρ of |maps| vs original")
    fig.legend(*axes[-1].get_legend_handles_labels(), fontsize=7, loc="outside right center")
    return fig


def markdown(results: Mapping[str, Any], methods: Sequence[str], args: Any) -> str:
    """Tables of the similarity at the flag step and after full randomisation, plus the flags."""
    parts = [f"# Sanity check — cascading model-parameter randomisation\n\n"
             f"Embedded models on the first n = {args.n_images} single-object test scenes; each cell is the mean "
             "Spearman ρ of |maps| (original vs randomised model) with its 95 % bootstrap interval; **FAILS** marks "
             f"a mean ≥ {FLAG_THRESHOLD} after the head and the top 50 % of the backbone are randomised (the map "
             "survives randomisation, whatever its perturbation score).\n"]
    for title, k in (("after head + top 50 % of the backbone (flag step)", FLAG_STEP), ("after the head only", 0),
                     ("fully randomised", 2)):
        header = ["method", *results]
        rows = []
        for method in methods:
            cells = [rc.LABELS.get(method, method)]
            for name in results:
                e = results[name]["methods"][method]
                text = harness.with_ci({"v": e["spearman_abs"][k]["mean"],
                                        "ci95": {"v": e["spearman_abs"][k]["ci95"]}}, "v", 2)
                text = text or "– (maps constant)"
                cells.append(f"{text}{' **FAILS**' if k == FLAG_STEP and e['fails_randomisation'] else ''}")
            rows.append(cells)
        parts.append(f"\n## ρ(|map|) {title}\n\n" + harness.markdown_table(header, rows))
    failing = sorted({rc.LABELS.get(m, m) + f" ({name})" for name, r in results.items()
                      for m, e in r["methods"].items() if e["fails_randomisation"]})
    parts.append("\n**Flagged (map survives randomisation):** " + (", ".join(failing) or "none") + "\n")
    times = ", ".join(f"{n}: {r['time']['cpu_s']} CPU-s / {r['time']['wall_s']} wall-s" for n, r in results.items())
    parts.append(f"\nRuntime ({args.threads} thread(s)): {times}.\n\n"
                 "Raw-map Spearman ρ and SSIM per step are in the JSON file. ρ is undefined for an image whose "
                 "randomised map is constant (e.g. Grad-CAM after ReLU zeroes every channel); such images are left out, "
                 "so `n` per cell can be below the number of images. " + harness.CI_NOTE + "\n")
    return "".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the check for every model and write the results files; returns the JSON data."""
    clock = rc.Stopwatch()
    args, methods, results = rc.run_models(__doc__, DEFAULT_N_IMAGES, argv, evaluate)
    data = {"experiment": NAME, "n_images": args.n_images, "flag_rule": {
        "step": FLAG_STEP, "metric": "mean spearman_abs", "threshold": FLAG_THRESHOLD},
        "models": results, "time": clock.read(),
        "failing": {name: [m for m, e in r["methods"].items() if e["fails_randomisation"]] for name, r in results.items()}}
    harness.write_results(NAME, markdown(results, methods, args), data, args, figures={"curves": figure(results, methods)})
    return data


if __name__ == "__main__":
    main()
