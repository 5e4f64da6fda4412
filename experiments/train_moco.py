"""Train the embedded head-less contrastive model on the scenes and save it in the published MoCo v2 layout.

    python experiments/train_moco.py --stop-after-epochs 15   # writes ssl_models/assets/moco.pth (the committed asset)

Model: MoCo v2's query encoder (small ResNet + 2-layer MLP projector) and a key encoder kept as its exponential
moving average. A positive pair is two renderings of one scene's objects (as in train_scan.py), each
colour-jittered, mirrored and cropped; labels are never read.

Objective (`--objective`): the committed asset is trained with `simclr` (the default): NT-Xent between the two views
of each scene against the batch's other views, the key encoder following as an EMA (issue 15 asks for a MoCo- or
SimCLR-style model in the MoCo v2 layout). `moco` is MoCo's InfoNCE of each query against its key and a queue of
past keys: on these scenes and this budget its loss rises towards log(queue + 1) and the features collapse
(linear probe 29.3 %, docs/dev-notes/issue-15b.md); `--key-splits N` (shuffled BN in one process: keys encoded in
N shuffled groups) and `--batch-negatives` (the batch's other keys are negatives besides the queue) did not stop it.

The file is {'epoch','arch','state_dict','optimizer'} with keys module.encoder_q.* / module.encoder_k.* /
module.queue, exactly the layout facebookresearch/moco writes, so `ssl_models.load` reads it like a published file
(with `simclr` the queue is left at its random initial keys, which no loader reads).
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train_common import (ASSETS, Clock, OneCycleModule, add_run_options, file_mb, load_split, load_views,
                          make_trainer, predict, setup, tensor_loader, to_input, write_report)
from train_scan import nt_xent, random_view, resnet_backbone, two_renderings

OBJECTIVES = ("moco", "simclr")


class MoCoModule(OneCycleModule):
    """encoder_q / encoder_k (torchvision keys, fc = MLP projector) and the normalised key queue."""

    def __init__(self, widths: tuple[int, ...], stem_width: int, proj: int, queue: int, momentum: float,
                 temperature: float, lr: float, weight_decay: float, total_steps: int, low_res_epochs: int,
                 same_prob: float, objective: str = "moco", key_splits: int = 1,
                 batch_negatives: bool = False, optimizer: str = "adamw") -> None:
        super().__init__(lr, weight_decay, total_steps, optimizer=optimizer)
        self.encoder_q = resnet_backbone(widths, stem_width)
        dim = 4 * widths[-1]
        self.encoder_q.fc = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, proj))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(proj, queue), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.momentum, self.temperature = momentum, temperature
        self.low_res_epochs, self.same_prob = low_res_epochs, same_prob
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective = objective
        if key_splits < 1:
            raise ValueError(f"key_splits must be >= 1, got {key_splits}")
        self.key_splits, self.batch_negatives = key_splits, batch_negatives

    def configure_optimizers(self):  # only the query encoder is trained by gradient
        encoder_k = self.encoder_k
        self.encoder_k = None
        try:
            return super().configure_optimizers()
        finally:
            self.encoder_k = encoder_k

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            k.mul_(self.momentum).add_(q.detach(), alpha=1 - self.momentum)
        for q, k in zip(self.encoder_q.buffers(), self.encoder_k.buffers()):
            k.copy_(q)

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        size, ptr = keys.shape[0], int(self.queue_ptr)
        if self.queue.shape[1] % size:
            raise ValueError(f"queue length {self.queue.shape[1]} must be a multiple of the batch size {size}")
        self.queue[:, ptr:ptr + size] = keys.T
        self.queue_ptr[0] = (ptr + size) % self.queue.shape[1]

    def _split_forward(self, encoder: nn.Module, x: Tensor, order: Tensor) -> Tensor:
        """encoder(x) with BatchNorm statistics taken over `key_splits` groups of the rows in `order`."""
        if x.shape[0] % self.key_splits:
            raise ValueError(f"batch size {x.shape[0]} must be a multiple of key_splits {self.key_splits}")
        out = torch.cat([encoder(chunk) for chunk in x[order].chunk(self.key_splits)])
        return out[order.argsort()]

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        a, b = two_renderings(batch[0], self.same_prob)
        xq, xk = random_view(a), random_view(b)
        if self.current_epoch < self.low_res_epochs:
            xq, xk = F.avg_pool2d(xq, 2), F.avg_pool2d(xk, 2)
        if self.objective == "simclr":  # NT-Xent between the two views; the key encoder only follows (EMA)
            z1, z2 = self.encoder_q(torch.cat([xq, xk])).chunk(2)
            loss = nt_xent(z1, z2, self.temperature)
            self._momentum_update()
            self.log("simclr_loss", loss, on_step=False, on_epoch=True)
            return loss
        # Shuffled BN (MoCo's fix, single process): a query and its key see BatchNorm statistics of different
        # groups, so the positive cannot be told from the queue by the batch statistics it shares with the query.
        n = xq.shape[0]
        q = F.normalize(self._split_forward(self.encoder_q, xq, torch.arange(n)), dim=1)
        with torch.no_grad():
            self._momentum_update()
            k = F.normalize(self._split_forward(self.encoder_k, xk, torch.randperm(n)), dim=1)
        if self.batch_negatives:  # the other keys of this batch are negatives too (positive = the diagonal)
            logits = torch.cat([q @ k.T, q @ self.queue.clone().detach()], 1) / self.temperature
            target = torch.arange(len(q), device=q.device)
        else:
            positive = (q * k).sum(1, keepdim=True)
            logits = torch.cat([positive, q @ self.queue.clone().detach()], 1) / self.temperature
            target = torch.zeros(len(q), dtype=torch.long, device=q.device)
        loss = F.cross_entropy(logits, target)
        self._enqueue(k)
        self.log("moco_loss", loss, on_step=False, on_epoch=True)
        return loss


@torch.no_grad()
def knn_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 k: int = 20) -> float:
    """Top-1 accuracy of a majority vote among the k most cosine-similar train features."""
    a, b = F.normalize(train_features, dim=1), F.normalize(test_features, dim=1)
    ids = (b @ a.T).topk(k, dim=1).indices
    votes = F.one_hot(train_labels[ids], int(train_labels.max()) + 1).sum(1)
    return float((votes.argmax(1) == test_labels).double().mean())


def main() -> None:
    """Pretext training, save in the MoCo v2 layout, reload through ssl_models.load, probe and kNN."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=17)
    p.add_argument("--low-res-epochs", type=int, default=16, help="leading epochs at half resolution")
    p.add_argument("--views", type=int, default=3, help="extra renderings of each train scene (positives)")
    p.add_argument("--same-prob", type=float, default=0.5, help="fraction of pairs made from one rendering")
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--widths", type=int, nargs=4, default=(16, 32, 64, 96), help="keeps the asset under 5 MB")
    p.add_argument("--stem-width", type=int, default=16)
    p.add_argument("--proj", type=int, default=64)
    p.add_argument("--queue", type=int, default=1024)
    p.add_argument("--momentum", type=float, default=0.99)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--objective", choices=OBJECTIVES, default="simclr",
                   help="simclr (the committed asset): NT-Xent between the two views, the key encoder kept as an "
                        "EMA and the queue left random; moco: InfoNCE against the queue (collapses on the scenes)")
    p.add_argument("--key-splits", type=int, default=1,
                   help="shuffled BN: keys are encoded in this many shuffled groups, queries in as many ordered ones")
    p.add_argument("--batch-negatives", action=argparse.BooleanOptionalAction, default=False,
                   help="the other keys of the batch are negatives besides the queue")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                   help="one-cycle AdamW (the asset) or SGD with Nesterov momentum 0.9 (MoCo's own optimiser)")
    add_run_options(p, lr=2e-3, weight_decay=0.01, out=str(ASSETS / "moco.pth"), probe=True)
    args = p.parse_args()
    setup(args.seed, args.threads)
    import ssl_models
    from linear_probe_eval import probe_model

    train = load_split("train", args.train_size, "single", seed=args.seed)
    views = torch.cat([train.images.unsqueeze(1), load_views("train", args.train_size, args.views, seed=args.seed)], 1)
    loader = tensor_loader(views, batch_size=args.batch_size, seed=args.seed)
    module = MoCoModule(tuple(args.widths), args.stem_width, args.proj, args.queue, args.momentum, args.temperature,
                        args.lr, args.weight_decay, args.epochs * len(loader), args.low_res_epochs, args.same_prob,
                        args.objective, args.key_splits, args.batch_negatives, args.optimizer)
    clock = Clock()
    make_trainer(args.epochs, args.max_minutes, stop_after_epochs=args.stop_after_epochs).fit(module, loader)
    train_s, train_cpu_s = clock.seconds()

    names = ("encoder_q", "encoder_k", "queue", "queue_ptr")
    state = {f"module.{k}": v.detach().clone() for k, v in module.state_dict().items() if k.startswith(names)}
    ssl_models.save_checkpoint({"epoch": args.epochs, "arch": "small_resnet", "state_dict": state,
                                "optimizer": {"state": {}, "param_groups": []}}, args.out)
    model = ssl_models.load(args.out)
    module.eval()
    test = load_split("test", 1200, "single", seed=args.seed)
    with torch.no_grad():
        reference = copy.deepcopy(module.encoder_q)
        reference.fc = nn.Identity()
        x = to_input(views[:8, 0])
        if not torch.allclose(model.features(x), reference(x), atol=1e-5):
            raise RuntimeError("the reloaded MoCo model does not reproduce the trained encoder")
    probe_train = load_split("train", args.probe_train_size, "single", seed=args.seed)
    knn = knn_accuracy(predict(model.features, probe_train.images), probe_train.labels,
                       predict(model.features, test.images), test.labels)
    report = {"train_seconds": train_s, "train_cpu_seconds": train_cpu_s, "epochs": args.epochs,
              "train_size": args.train_size, "knn20_test_acc": knn, "objective": args.objective, "threads": args.threads,
              "lr": args.lr, "optimizer": args.optimizer, "momentum": args.momentum, "key_splits": args.key_splits,
              "batch_negatives": args.batch_negatives, "low_res_epochs": args.low_res_epochs,
              "params": sum(p.numel() for p in model.parameters()), "checkpoint_mb": file_mb(args.out)}
    report.update(probe_model(model, args.probe_train_size, seed=args.seed))
    write_report("moco", report)


if __name__ == "__main__":
    main()
