"""Faithfulness and localisation of every method on every embedded model, with 95 % CIs and a rank table.

    python experiments/faithfulness.py                       # 5 models × 11 methods, 8 test scenes
    python experiments/faithfulness.py --models vgg --methods agf,gradcam --n-images 8

Per image (maps of the model's own top-1 class on single-object test scenes):
- ROAD (noisy linear imputation, noise 0.01): area under the target probability over p = 0.2, 0.5, 0.8 for
  MoRF (lower is better) and LeRF (higher is better), and their gap LeRF − MoRF (higher is better);
- deletion / insertion: area under the target probability over 0 … 1 in 8 steps, blurred baseline (σ = 5 px);
  deletion lower, insertion higher is better;
- pointing game, relevance mass (of the map's positive part) and relevance rank accuracy against the object
  mask (higher is better);
- label-free (no labels, no head): 1 − cosine between the backbone embeddings of the clean and the perturbed
  image (pixels set to 0), area over p = 0.2, 0.5, 0.8, MoRF (higher is better) and LeRF (lower is better);
  kNN agreement under LeRF (share of p = 0.2, 0.5, 0.8 where the 5-NN scene label of the embedding, cosine
  over 256 train scenes, is unchanged; higher is better).
The rank table gives each method's mean rank over the models (1 = best) per metric. Methods flagged by
experiments/results/sanity_checks.json (maps that survive model randomisation) are marked.
Writes experiments/results/faithfulness.{md,json} and faithfulness_ranks.png.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import reviewer_common as rc  # noqa: E402
from sslx.metrics import (curve_area, embedding_cosine_drop, insertion_deletion_curve, knn_agreement,  # noqa: E402
                          pointing_game, relevance_mass, relevance_rank_accuracy, road_scores)

NAME = "faithfulness"
DEFAULT_N_IMAGES = 8
FRACTIONS = (0.2, 0.5, 0.8)
N_REFERENCE, K = 256, 5
# metric → higher is better
METRICS = {"road_morf": False, "road_lerf": True, "road_gap": True, "deletion": False, "insertion": True,
           "pointing_game": True, "relevance_mass": True, "rank_accuracy": True,
           "cosine_drop_morf": True, "cosine_drop_lerf": False, "knn_agreement_lerf": True}
METRIC_LABELS = {"road_morf": "ROAD MoRF ↓", "road_lerf": "ROAD LeRF ↑", "road_gap": "ROAD gap ↑",
                 "deletion": "deletion ↓", "insertion": "insertion ↑", "pointing_game": "pointing ↑",
                 "relevance_mass": "rel. mass ↑", "rank_accuracy": "rank acc. ↑",
                 "cosine_drop_morf": "cos-drop MoRF ↑", "cosine_drop_lerf": "cos-drop LeRF ↓",
                 "knn_agreement_lerf": "kNN agree LeRF ↑"}


class Embedder(nn.Module):
    """The model's backbone (penultimate embedding) as a module of its own."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)


class ReferenceScorer(nn.Module):
    """Trainer.predict rows: ids, backbone features and scene labels of the reference images."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"ids": batch["index"], "features": self.model.backbone(batch["image"]),
                "labels": torch.as_tensor(batch["label"])}


class FaithfulnessScorer(nn.Module):
    """Per image and method: every metric of this experiment."""

    def __init__(self, model: nn.Module, methods: Sequence[str], reference: Tensor, labels: Tensor) -> None:
        super().__init__()
        self.model, self.methods = model, tuple(methods)
        self.embedder = Embedder(model).eval()
        self.register_buffer("reference", reference)
        self.register_buffer("labels", labels)

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        x, masks = batch["image"], (batch["mask"] > 0).unsqueeze(1)
        pixels, norm = rc.unnormalised(self.model, x)
        with torch.no_grad():
            targets = self.model(x).argmax(dim=1)
        grid = torch.tensor(FRACTIONS, dtype=torch.float64)
        rows: dict[str, Tensor] = {"ids": batch["index"]}
        for method in self.methods:
            maps = rc.Explainer(method)(self.model, x, targets)
            per = {}
            for order in ("morf", "lerf"):
                road = road_scores(self.model, pixels, maps, targets, order, FRACTIONS, norm)
                per[f"road_{order}"] = curve_area(grid, road.probability.double())
                drop = embedding_cosine_drop(self.embedder, pixels, maps, order, FRACTIONS, norm)
                per[f"cosine_drop_{order}"] = curve_area(grid, drop.double())
            per["road_gap"] = per["road_lerf"] - per["road_morf"]
            for kind in ("deletion", "insertion"):
                fractions, curve = insertion_deletion_curve(self.model, pixels, maps, targets, kind, 8, "blur", norm)
                per[kind] = curve_area(fractions.double(), curve.double())
            per["pointing_game"] = pointing_game(maps, masks)
            per["relevance_mass"] = relevance_mass(maps.clamp(min=0), masks)
            per["rank_accuracy"] = relevance_rank_accuracy(maps, masks)
            agree = knn_agreement(self.embedder, self.reference, self.labels, pixels, maps, "lerf", FRACTIONS, norm, K)
            per["knn_agreement_lerf"] = agree.double().mean(dim=1)
            for metric, values in per.items():
                rows[f"{method}|{metric}"] = values.double()
        return rows


def evaluate(name: str, methods: Sequence[str], args: Any) -> dict[str, Any]:
    """Every metric of every method on model `name`, with CIs."""
    clock = rc.Stopwatch()
    model = rc.load_model(name)
    ref_rows = harness.run_predict(ReferenceScorer(model), rc.ssl_eval.loader(
        rc.ssl_eval.scenes(model, "train", N_REFERENCE, seed=args.seed), 64), args)
    scorer = FaithfulnessScorer(model, methods, ref_rows["features"], ref_rows["labels"].long())
    rows = harness.run_predict(scorer, rc.data_loader(model, args.n_images, args.batch_size, args.seed), args)
    out = {"methods": {m: {metric: rc.summary(rows[f"{m}|{metric}"]) for metric in METRICS} for m in methods},
           "n_images": int(rows["ids"].numel()), "time": clock.read()}
    print(f"[{name}] {out['time']}", flush=True)
    return out


def flagged(out_dir: Path) -> dict[str, list[str]]:
    """Methods that failed the randomisation check per model (empty when sanity_checks.json is absent)."""
    path = Path(out_dir) / "sanity_checks.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("failing", {})


def figure(ranks: Mapping[str, Mapping[str, float]], methods: Sequence[str]) -> Figure:
    """Mean-rank matrix (methods × metrics), annotated, 1 = best."""
    fig = Figure(figsize=(1.0 + 0.8 * len(ranks), 0.9 + 0.35 * len(methods)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    grid = torch.tensor([[ranks[k][m] for k in ranks] for m in methods])
    image = ax.imshow(grid.numpy(), cmap="viridis_r", aspect="auto")
    for i in range(len(methods)):
        for j in range(len(ranks)):
            ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_xticks(range(len(ranks)), [METRIC_LABELS[k] for k in ranks], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)), [rc.LABELS.get(m, m) for m in methods], fontsize=8)
    fig.colorbar(image, ax=ax, label="mean rank over models (1 = best)")
    return fig


def markdown(results: Mapping[str, Any], ranks: Mapping[str, Mapping[str, float]], methods: Sequence[str],
             fails: Mapping[str, Sequence[str]], args: Any) -> str:
    """Rank table, winners per metric, and one table per model with every value and its CI."""
    mark = lambda m, models: " †" if any(m in fails.get(n, []) for n in models) else ""  # noqa: E731
    header = ["method", *[METRIC_LABELS[k] for k in METRICS]]
    rows = [[rc.LABELS.get(m, m) + mark(m, results), *[ranks[k][m] for k in METRICS]] for m in methods]
    winners = {k: min(methods, key=lambda m: ranks[k][m]) for k in METRICS}
    parts = [f"# Faithfulness and localisation — every method × embedded model\n\n"
             f"n = {args.n_images} single-object test scenes per model; models: {', '.join(results)}.\n\n"
             "## Mean rank over models (1 = best)\n\n" + harness.markdown_table(header, rows)
             + "\n† failed the randomisation sanity check on at least one model (experiments/results/sanity_checks.md)"
             ": its map survives randomising the top of the network, whatever these scores say.\n\n"
             "Best mean rank per metric: " + "; ".join(f"{METRIC_LABELS[k]}: {rc.LABELS.get(w, w)}"
                                                       for k, w in winners.items()) + ".\n"]
    for name, res in results.items():
        rows = [[rc.LABELS.get(m, m) + (" †" if m in fails.get(name, []) else ""),
                 *[harness.with_ci({"v": res["methods"][m][k]["mean"], "ci95": {"v": res["methods"][m][k]["ci95"]}},
                                   "v", 2) for k in METRICS]] for m in methods]
        parts.append(f"\n## {name} (CPU {res['time']['cpu_s']} s, wall {res['time']['wall_s']} s)\n\n"
                     + harness.markdown_table(header, rows))
    parts.append("\nAreas: ROAD and the cosine drop over p = 0.2, 0.5, 0.8 (trapezoid, so at most 0.6); deletion/"
                 "insertion over 0 … 1. Undefined scores (empty mask, zero map total) are left out of a cell's n. "
                 + harness.CI_NOTE + "\n")
    return "".join(parts)


def reuse(name: str, methods: Sequence[str], args: Any) -> dict[str, Any]:
    """Model `name`'s scores from the faithfulness.json already in --out-dir (--reuse-results)."""
    path = Path(args.out_dir) / f"{NAME}.json"
    if not path.is_file():
        raise FileNotFoundError(f"--reuse-results needs {path}; run the experiment without it first")
    stored = json.loads(path.read_text())
    if name not in stored.get("models", {}) or stored.get("n_images") != args.n_images:
        raise ValueError(f"{path} has no results of model {name!r} with n = {args.n_images}")
    return stored["models"][name]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every metric for every model and write the results files; returns the JSON data.

    ``--reuse-results`` (first argument) rebuilds the tables, ranks, flags and plot from the stored JSON,
    e.g. after sanity_checks.py has (re)written its flags.
    """
    clock = rc.Stopwatch()
    argv = list(sys.argv[1:] if argv is None else argv)
    score = evaluate
    if argv[:1] == ["--reuse-results"]:
        argv, score = argv[1:], reuse
    args, methods, results = rc.run_models(__doc__, DEFAULT_N_IMAGES, argv, score)
    means = {n: {m: {k: v["mean"] for k, v in r["methods"][m].items()} for m in methods} for n, r in results.items()}
    ranks = rc.rank_table(means, METRICS, methods)
    fails = flagged(args.out_dir)
    data = {"experiment": NAME, "n_images": args.n_images, "fractions": list(FRACTIONS), "higher_is_better": METRICS,
            "models": results, "mean_rank": ranks, "failing_randomisation": fails,
            "time": clock.read() if score is evaluate else
            json.loads((Path(args.out_dir) / f"{NAME}.json").read_text()).get("time")}
    harness.write_results(NAME, markdown(results, ranks, methods, fails, args), data, args,
                          figures={"ranks": figure(ranks, methods)})
    return data


if __name__ == "__main__":
    main()
