"""Fine-tune the embedded supervised VGG into a multi-label classifier (BCE) for the Table 3b VOC analog.

    python experiments/train_multilabel.py      # writes ssl_models/assets/multilabel_vgg.pth

The paper's VOC experiment explains every class a multi-label VGG scores above sigmoid 0.5. Here the
embedded supervised VGG's weights are fine-tuned with binary cross-entropy on two-object train scenes
(two different classes) mixed with single-object ones, with the augmentation of train_supervised.py.
The file has the format of supervised_vgg.pth ({'arch', 'config', 'state_dict', 'classes', 'metrics'}),
so `sslx.assets.load_supervised(path)` rebuilds it; its outputs are logits, read with a sigmoid.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train_common import (ASSETS, Clock, OneCycleModule, agf_check, file_mb, load_split, make_trainer, predict,
                          random_flip, random_shift, setup, tensor_loader, to_input, write_report)

OUT = ASSETS / "multilabel_vgg.pth"


def multi_hot(object_labels: Tensor, num_classes: int) -> Tensor:
    """N×2 object classes (−1 = no second object) → N×num_classes float multi-hot targets."""
    present = object_labels >= 0
    hot = torch.zeros(object_labels.shape[0], num_classes + 1, dtype=torch.float32)
    hot.scatter_(1, torch.where(present, object_labels, num_classes), 1.0)
    return hot[:, :num_classes]


class MultiLabelModule(OneCycleModule):
    """BCE-with-logits fine-tuning on uint8 scenes with mirror / shift augmentation (first epochs at half size)."""

    def __init__(self, net: nn.Module, lr: float, weight_decay: float, total_steps: int, shift: int,
                 low_res_epochs: int) -> None:
        super().__init__(lr, weight_decay, total_steps, optimizer="adamw")
        self.net, self.shift, self.low_res_epochs = net, shift, low_res_epochs

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        x = random_shift(random_flip(to_input(images)), self.shift)
        if self.current_epoch < self.low_res_epochs:
            x = F.avg_pool2d(x, 2)  # progressive resizing, as train_supervised.py
        logits = self.net(x)
        loss = F.binary_cross_entropy_with_logits(logits, targets)
        self.log("loss", loss, on_step=False, on_epoch=True)
        return loss


def multilabel_metrics(logits: Tensor, targets: Tensor, prefix: str) -> dict[str, float]:
    """Exact-set accuracy of sigmoid > 0.5, micro precision/recall, and mean #classes above 0.5."""
    chosen = logits.sigmoid() > 0.5
    truth = targets > 0.5
    tp = (chosen & truth).sum().item()
    return {
        f"{prefix}_exact_set_acc": float((chosen == truth).all(1).double().mean()),
        f"{prefix}_precision": tp / max(int(chosen.sum()), 1),
        f"{prefix}_recall": tp / max(int(truth.sum()), 1),
        f"{prefix}_mean_classes_above_0.5": float(chosen.sum(1).double().mean()),
    }


def main() -> None:
    """Fine-tune, evaluate on pair and single test scenes, save, reload and check AGF."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair-size", type=int, default=3000, help="two-object train scenes")
    p.add_argument("--single-size", type=int, default=1500, help="single-object train scenes")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--low-res-epochs", type=int, default=0, help="leading epochs at half resolution")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="peak one-cycle AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--shift", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    setup(args.seed, args.threads)
    import ssl_models
    from sslx.assets import asset_path, load_supervised, read_supervised

    base = read_supervised(asset_path("vgg"))
    net = load_supervised(asset_path("vgg"), "vgg").train()
    num_classes = len(base["classes"])
    pair = load_split("train", args.pair_size, "pair", seed=args.seed)
    single = load_split("train", args.single_size, "single", seed=args.seed)
    images = torch.cat([pair.images, single.images])
    targets = torch.cat([multi_hot(pair.object_labels, num_classes), multi_hot(single.object_labels, num_classes)])
    loader = tensor_loader(images, targets, batch_size=args.batch_size, seed=args.seed)
    module = MultiLabelModule(net, args.lr, args.weight_decay, args.epochs * len(loader), args.shift,
                              args.low_res_epochs)
    clock = Clock()
    make_trainer(args.epochs).fit(module, loader)
    train_s, train_cpu_s = clock.seconds()

    net.eval()
    metrics: dict[str, float | int] = {"train_seconds": train_s, "train_cpu_seconds": train_cpu_s,
                                       "epochs": args.epochs, "low_res_epochs": args.low_res_epochs,
                                       "lr": args.lr, "pair_train_size": args.pair_size,
                                       "single_train_size": args.single_size, "init": "supervised_vgg.pth"}
    for objects in ("pair", "single"):
        test = load_split("test", 600, objects, seed=args.seed)
        metrics.update(multilabel_metrics(predict(net, test.images), multi_hot(test.object_labels, num_classes),
                                          f"test_{objects}"))
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    ssl_models.save_checkpoint({"arch": "vgg", "config": base["config"], "state_dict": state,
                                "classes": list(base["classes"]), "metrics": metrics}, args.out)
    model = load_supervised(args.out, "vgg")
    sample = load_split("test", 8, "pair", seed=args.seed).images
    with torch.no_grad():
        if not torch.equal(model(to_input(sample)), net(to_input(sample))):
            raise RuntimeError("the reloaded classifier does not reproduce the trained network")
    write_report("multilabel_vgg", {**metrics, "checkpoint_mb": file_mb(args.out)})
    agf_check(model, sample[:2])


if __name__ == "__main__":
    main()
