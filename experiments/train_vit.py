"""Train the embedded supervised tiny ViT on single-object scenes and save it as an sslx asset.

    OMP_NUM_THREADS=1 python experiments/train_vit.py     # writes ssl_models/assets/supervised_vit.pth

The committed asset is that run (12 epochs, a convolutional stem of 24/48/64 channels before the 2×2 patch
projection): 90.5 % test accuracy (n = 1200), 905 s wall on one thread while the other core trained another model
(experiments/results/vit/train_vit.log). Without the stem (`--stem-channels` with no widths: plain 16×16 patches) the
same recipe reached 63.4 % (train_vit_patch16_superseded.log); in a 3-epoch A/B of the two, 10.3 % against 31.7 %.

Same file layout as the other supervised assets ({'arch': 'vit', 'config', 'state_dict', 'classes', 'metrics'});
`sslx.assets.load_embedded("vit")` rebuilds it. Plain PyTorch loop: AdamW, warm-up + cosine, label smoothing,
mirror / shift augmentation.
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from train_common import (ASSETS, Clock, class_accuracy, file_mb, load_split, predict, random_flip, random_shift,
                          setup, to_input, write_report)


def main() -> None:
    """Train, evaluate on the test split, save, reload and check that the ViT explanations run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--train-size", type=int, default=9600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--shift", type=int, default=4)
    p.add_argument("--label-smoothing", type=float, default=0.05)
    p.add_argument("--stem-channels", type=int, nargs="*", default=[24, 48, 64],
                   help="widths of a 3×3 stride-2 convolutional stem before the patch projection (none: plain patches)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=20.0, help="safety stop after this many minutes")
    p.add_argument("--stop-after-epochs", type=int, default=None,
                   help="train only the first N epochs of the planned schedule (the schedule still spans all)")
    p.add_argument("--out", default=str(ASSETS / "supervised_vit.pth"))
    args = p.parse_args()
    setup(args.seed, args.threads)
    import ssl_models
    import sslx
    from sslx.assets import load_supervised
    from sslx.data.scenes import SCENE_CLASSES
    from sslx.models.vit import TINY_VIT, tiny_vit

    train = load_split("train", args.train_size, "single", seed=args.seed)
    test = load_split("test", 1200, "single", seed=args.seed)
    config = {**TINY_VIT, "num_classes": len(SCENE_CLASSES)}
    if args.stem_channels:
        config["stem_channels"] = list(args.stem_channels)
    net = tiny_vit(len(SCENE_CLASSES), stem_channels=tuple(args.stem_channels))
    decay = [q for q in net.parameters() if q.ndim > 1]
    no_decay = [q for q in net.parameters() if q.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = args.train_size // args.batch_size
    total = args.epochs * steps_per_epoch
    warm = steps_per_epoch // 2
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    gen = torch.Generator().manual_seed(args.seed)
    clock = Clock()
    epochs_run = 0
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(args.train_size, generator=gen)
        loss_sum, hits = 0.0, 0
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x = random_shift(random_flip(to_input(train.images[idx])), args.shift)
            logits = net(x)
            loss = F.cross_entropy(logits, train.labels[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_sum += float(loss.detach())
            hits += int((logits.argmax(1) == train.labels[idx]).sum())
        epochs_run = epoch + 1
        net.eval()
        acc = class_accuracy(predict(net, test.images[:300]), test.labels[:300])
        wall, _ = clock.seconds()
        print(f"epoch {epochs_run}/{args.epochs} loss {loss_sum / steps_per_epoch:.4f} "
              f"train_acc {hits / (steps_per_epoch * args.batch_size):.4f} test300_acc {acc:.4f} {wall:.0f}s", flush=True)
        if args.stop_after_epochs is not None and epochs_run >= args.stop_after_epochs:
            break
        if wall > args.max_minutes * 60:
            print("safety stop: --max-minutes reached", flush=True)
            break
    train_s, train_cpu_s = clock.seconds()
    net.eval()
    metrics = {"test_acc": class_accuracy(predict(net, test.images), test.labels), "train_seconds": train_s,
               "train_cpu_seconds": train_cpu_s, "epochs": epochs_run, "train_size": args.train_size}
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    ssl_models.save_checkpoint({"arch": "vit", "config": config, "state_dict": state, "classes": list(SCENE_CLASSES),
                                "metrics": metrics}, args.out)
    model = load_supervised(args.out, "vit")
    with torch.no_grad():
        if not torch.equal(model(to_input(test.images[:8])), net(to_input(test.images[:8]))):
            raise RuntimeError("the reloaded ViT does not reproduce the trained network")
    write_report("supervised_vit", {**metrics, "params": sum(q.numel() for q in net.parameters()),
                                    "checkpoint_mb": file_mb(args.out)})
    maps = sslx.explain(model, to_input(test.images[:2]), method="transformer_attribution")
    if not torch.isfinite(maps).all() or not bool((maps.flatten(1).abs().amax(1) > 0).all()):
        raise RuntimeError("transformer_attribution returned a bad map on the trained ViT")


if __name__ == "__main__":
    main()
