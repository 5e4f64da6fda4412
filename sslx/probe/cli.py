"""Command line of `python -m sslx.probe`: options → ProbeConfig → run, with clear one-line errors."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from sslx.probe.run import ProbeConfig, ProbeJob

DESCRIPTION = """\
Train a supervised linear probe after a layer of a frozen self-supervised network (paper Fig. 4b),
explain the probe's predictions on held-out images with AGF (and other methods), and score the
explanations against ground-truth masks (pixel accuracy, mAP, mIoU) and by negative perturbation (AUC).

Example:  python -m sslx.probe --layer 4          (embedded RotNet, procedural scenes, a few minutes on CPU)
          python -m sslx.probe --layer all --methods agf,gradcam
Outputs in --out: metrics.json, <layer>/overlays.png, <layer>/probe.pt, <layer>/checkpoints/last.ckpt,
layers_*.png and layer_strip.png for --layer all, and the W&B run under wandb/.
"""


def _methods(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser; every option's help says what it does and its default."""
    d = ProbeConfig()
    p = argparse.ArgumentParser(prog="python -m sslx.probe", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--layer", default=None, help="layer to probe: 1-based index into the model's probe-able layers "
      "(RotNet/AlexNet: 1=conv1 … 5=conv5), a layer name such as conv4, or 'all' to sweep every layer")
    a("--model", default=d.model, help="embedded model name (rotnet, sela, scan, vit) or a checkpoint file read by "
      f"ssl_models.load (default: {d.model})")
    a("--kind", default=None, help="checkpoint family (scan, sela, rotnet, moco, swav, dino, vicreg, simclr, byol, "
      "torchvision); detected from the keys when omitted; needed for converted SimCLR v1 / BYOL files (plain "
      "torchvision ResNets) and to label backbone-only DINO / VICReg files")
    a("--data", default=d.data, help="'scenes' (the embedded procedural benchmark, with exact object masks) or an "
      "ImageFolder directory <dir>/<class>/<image>; a stratified 20%% of a folder is held out and split (seeded) "
      "into disjoint validation and test images; metrics.json lists which images each split used "
      f"(default: {d.data})")
    a("--masks", default=None, help="for an image folder: masks directory <masks>/<class>/<stem>.png (> 0 = object); "
      "without it the segmentation scores are skipped")
    a("--epochs", type=int, default=d.epochs, help=f"training epochs per probe (default: {d.epochs})")
    a("--batch-size", type=int, default=d.batch_size, help="global training batch size, split across processes "
      f"(default: {d.batch_size})")
    a("--max-images", type=int, default=d.max_images, help=f"training images (default: {d.max_images})")
    a("--val-images", type=int, default=d.val_images, help="validation images for the accuracy curve "
      f"(default: {d.val_images})")
    a("--eval-images", type=int, default=d.eval_images, help="held-out images that are explained and scored "
      f"(default: {d.eval_images})")
    a("--eval-batch-size", type=int, default=d.eval_batch_size, help="images per process per evaluation batch "
      f"(default: {d.eval_batch_size})")
    a("--methods", type=_methods, default=d.methods, help="comma-separated explanation methods, e.g. agf,gradcam "
      "(gradcam is taken at the probed layer) (default: agf)")
    a("--metrics", type=_methods, default=d.metrics, help="reviewer metrics scored beside segmentation and "
      "perturbation, comma-separated: road, deletion, insertion, pointing_game, relevance_mass, rank_accuracy "
      "(the last three need masks) (default: none)")
    a("--out", default=d.out, help=f"output folder (default: {d.out})")
    a("--wandb", choices=("offline", "online", "disabled"), default=d.wandb,
      help="Weights & Biases mode: offline (no account needed; files under <out>/wandb, `wandb sync` them later), "
      f"online (needs `wandb login` or WANDB_API_KEY; never prompts) or disabled (default: {d.wandb})")
    a("--wandb-project", default=d.wandb_project, help=f"W&B project name (default: {d.wandb_project})")
    a("--accelerator", default=d.accelerator, help="Lightning accelerator: auto, cpu, gpu, … "
      f"(default: {d.accelerator})")
    a("--devices", default=d.devices, help="number of devices/processes, e.g. 2 (with --strategy ddp), or auto = every device "
      f"the accelerator finds (default: {d.devices})")
    a("--strategy", default=d.strategy, help="Lightning strategy, e.g. ddp (several processes; gloo on CPU) "
      f"(default: {d.strategy})")
    a("--seed", type=int, default=d.seed, help=f"seed for data, initialisation and shuffling (default: {d.seed})")
    a("--resume", action="store_true", help="continue a previous run in --out: skip finished layers and resume "
      "unfinished training from <layer>/checkpoints/last.ckpt (the options must match)")
    a("--optimizer", choices=("sgd", "adam"), default=d.optimizer, help="probe optimiser: sgd (Nesterov, momentum "
      f"0.9) or adam; cosine learning-rate decay over the epochs (default: {d.optimizer})")
    a("--lr", type=float, default=d.lr, help=f"initial learning rate (default: {d.lr})")
    a("--weight-decay", type=float, default=d.weight_decay, help=f"weight decay (default: {d.weight_decay})")
    a("--probe-features", type=int, default=d.probe_features, help="target number of probe features C·p·p "
      "(the pooled side p is capped at the feature map's side) (default: 9216, the AlexNet protocol's)")
    a("--overlays", type=int, default=d.overlays, help="held-out images drawn in overlays.png and the W&B table "
      f"(default: {d.overlays}; 0 = none)")
    a("--workers", type=int, default=d.workers, help=f"DataLoader worker processes (default: {d.workers})")
    a("--vit-token", choices=("cls", "mean"), default=d.vit_token, help="for ViTs (--model vit or a DINO checkpoint; "
      "--layer N = after block N): probe the CLS token or the mean of the patch tokens (default: cls)")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the CLI and return the results; bad options, models or data end with
    'python -m sslx.probe: error: …' and exit status 2 before any training."""
    parser = build_parser()
    config = ProbeConfig(**vars(parser.parse_args(argv)))
    try:
        job = ProbeJob(config)
    except (ValueError, TypeError, OSError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return job.run()


if __name__ == "__main__":  # pragma: no cover
    from sslx.allocator import keep_freed_memory
    keep_freed_memory()
    main(sys.argv[1:])
