"""Shared plumbing of the paper experiments: common options, batched Lightning predict runs, results files.

Every experiment script follows the same shape:

    parser = experiment_parser(__doc__)            # + the script's own options
    args = parser.parse_args()
    setup(args)
    out = run_predict(score_batch, loader, args)   # Trainer.predict over the loader, any strategy
    write_results("table2", markdown, data, args, figures={"curves": fig})

`score_batch(batch) -> dict[str, Tensor]` returns per-image rows (first dimension = batch size) plus an
"ids" entry with the dataset indices; `run_predict` concatenates them over batches and, under DDP,
gathers them from every rank and drops the padding duplicates by id, sorted by id.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from sslx._io import atomic_write  # noqa: E402

__all__ = ["CI_NOTE", "RESULTS", "ROOT", "experiment_parser", "markdown_table", "run_predict", "setup", "with_ci",
           "write_results"]

CI_NOTE = ("Every score prints as `value [lo, hi]`: [lo, hi] is its 95 % percentile bootstrap interval over the "
           "evaluated images (1000 resamples of the images with replacement, seed 0; `sslx.metrics.bootstrap`; "
           "dataset-level ratios such as pixel accuracy and mIoU are recomputed from the resampled images' counts). "
           "The JSON file holds each interval as `ci95` and the number of images behind it as `n`.")


def experiment_parser(description: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser with the options every experiment shares."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("common experiment options")
    g.add_argument("--n-images", type=int, default=None, help="images evaluated (default: the script's own)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--out-dir", type=Path, default=RESULTS, help="where <name>.md/.json/.png go")
    g.add_argument("--wandb", choices=("disabled", "offline", "online"), default="disabled",
                   help="log the results to Weights & Biases (offline needs no account)")
    g.add_argument("--accelerator", default="cpu", help="Lightning accelerator (cpu, gpu, auto)")
    g.add_argument("--devices", default="1", help="Lightning devices (e.g. 1, 4, auto)")
    g.add_argument("--strategy", default="auto", help="Lightning strategy (auto, ddp, …)")
    g.add_argument("--num-nodes", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    return p


def setup(args: argparse.Namespace) -> None:
    """Seed everything and pin the CPU thread count; validates the common options."""
    if args.n_images is not None and args.n_images < 1:
        raise ValueError(f"--n-images must be a positive integer, got {args.n_images}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, workers=True, verbose=False)


class _BatchScorer(pl.LightningModule):
    """Trainer.predict wrapper around a per-batch scoring function; gathers every rank's rows."""

    def __init__(self, score_batch: Callable[[Any], Mapping[str, Tensor]]) -> None:
        super().__init__()
        self.score_batch = score_batch
        self.rows: list[Mapping[str, Tensor]] = []
        self.gathered: dict[str, Tensor] = {}

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        out = self.score_batch(batch)
        if "ids" not in out:
            raise KeyError("score_batch must return an 'ids' entry (dataset indices of the batch's images)")
        n = len(out["ids"])
        bad = {k: tuple(v.shape) for k, v in out.items() if v.dim() == 0 or v.shape[0] != n}
        if bad:
            raise ValueError(f"score_batch returned entries whose first dimension is not the batch size {n}: {bad}")
        self.rows.append({k: v.detach() for k, v in out.items()})

    def on_predict_epoch_end(self) -> None:
        if not self.rows:
            raise ValueError("the experiment's dataloader yielded no batches (empty dataset?)")
        local = {k: torch.cat([r[k] for r in self.rows]) for k in self.rows[0]}
        if self.trainer.world_size > 1:
            local = {k: self.all_gather(v).flatten(0, 1) for k, v in local.items()}
        ids = local["ids"].long()
        order = torch.argsort(ids, stable=True)
        keep = torch.ones_like(order, dtype=torch.bool)
        keep[1:] = ids[order][1:] != ids[order][:-1]  # DistributedSampler pads with repeated images
        self.gathered = {k: v[order][keep].cpu() for k, v in local.items()}


def run_predict(score_batch: Callable[[Any], Mapping[str, Tensor]], loader: Any,
                args: argparse.Namespace) -> dict[str, Tensor]:
    """Run `score_batch` over `loader` with Trainer.predict; per-image rows of all ranks, sorted by id."""
    devices: Any = int(args.devices) if str(args.devices).isdigit() else args.devices
    trainer = pl.Trainer(accelerator=args.accelerator, devices=devices, strategy=args.strategy,
                         num_nodes=args.num_nodes, inference_mode=False,  # attribution methods need autograd
                         logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    scorer = _BatchScorer(score_batch)
    trainer.predict(scorer, loader, return_predictions=False)
    return scorer.gathered


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> str:
    """A GitHub markdown table; floats printed with `digits` decimals, None as '–'."""
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row must have {len(header)} cells like the header {list(header)}")
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def with_ci(entry: Mapping[str, Any], metric: str, digits: int = 1) -> str | None:
    """`value [lo, hi]` for entry[metric] and entry["ci95"][metric]; None (printed '–') when the value is missing/NaN."""
    value = entry.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    low, high = entry.get("ci95", {}).get(metric, (math.nan, math.nan))
    if math.isnan(low) or math.isnan(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _scalars(data: Any, prefix: str = "") -> dict[str, float]:
    """Flatten nested dicts of numbers into 'a/b/c' → value (lists and strings skipped)."""
    out: dict[str, float] = {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            out.update(_scalars(v, f"{prefix}{k}/"))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out[prefix.rstrip("/")] = float(data)
    return out


def write_results(name: str, markdown: str, data: Mapping[str, Any], args: argparse.Namespace,
                  figures: Mapping[str, Any] | None = None) -> list[Path]:
    """Write <out-dir>/<name>.md, <name>.json and <name>_<figure>.png atomically; log to W&B if asked."""
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [atomic_write(out_dir / f"{name}.md", lambda f: f.write(markdown.encode()))]
    text = json.dumps(data, indent=2, sort_keys=True, default=float)
    paths.append(atomic_write(out_dir / f"{name}.json", lambda f: f.write(text.encode())))
    for key, fig in (figures or {}).items():
        paths.append(atomic_write(out_dir / f"{name}_{key}.png", lambda f, fig=fig: fig.savefig(f, format="png", dpi=110,
                                                                                             bbox_inches="tight")))
    if args.wandb != "disabled":
        from sslx.probe.tracking import start_run, wandb_environment

        with wandb_environment(args.wandb, out_dir):
            run = start_run(args.wandb, out_dir, "sslx-experiments", {"experiment": name, **{
                k: str(v) for k, v in vars(args).items()}})
            run.log(_scalars(data))
            for key in figures or {}:
                import wandb

                run.log({f"figures/{key}": wandb.Image(str(out_dir / f"{name}_{key}.png"))})
            run.finish()
    for p in paths:
        print(f"wrote {p}", flush=True)
    return paths
