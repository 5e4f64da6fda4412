"""Train the embedded SeLa model (self-labelling with Sinkhorn-Knopp pseudo-labels) and save it in the SeLa layout.

    python experiments/train_sela.py               # writes ssl_models/assets/sela.pth

BN AlexNet (`features.N`, `classifier.N`) with several linear heads `top_layer0..h-1`. Pseudo-labels
are re-estimated a few times per epoch: every train scene's head probabilities P (no augmentation)
are turned into an equipartitioned labelling by Sinkhorn-Knopp on P^λ (Asano et al. 2020); the
network is then trained with cross-entropy on those labels (one loss per head) under augmentation:
each step shows a scene as one of its renderings (`scene_tensors.load_views`: the same objects with
background, position, colours and texture drawn anew), colour-jittered, mirrored and shifted.
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models.alexnet import CONV_GEOMETRY, pool5_side
from train_common import (ASSETS, Clock, OneCycleModule, SceneTensors, add_run_options, agf_check, color_augment,
                          file_mb, hungarian_accuracy, load_split, load_views, make_trainer, predict, random_flip, random_shift,
                          setup, tensor_loader, to_input, write_report)


class SelaAlexNet(nn.Module):
    """SeLa's AlexNet: `features` (Conv-BN-ReLU, pools after 1, 2, 5), `classifier` (Dropout-Linear-ReLU ×2), heads."""

    def __init__(self, widths: tuple[int, ...], fc: int, heads: int, clusters: int, input_size: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, (width, (k, s, p)) in enumerate(zip(widths, CONV_GEOMETRY)):
            layers += [nn.Conv2d(cin, width, k, stride=s, padding=p), nn.BatchNorm2d(width), nn.ReLU()]
            if i in (0, 1, 4):
                layers.append(nn.MaxPool2d(3, stride=2))
            cin = width
        side = pool5_side(input_size)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(cin * side * side, fc), nn.ReLU(),
                                        nn.Dropout(0.5), nn.Linear(fc, fc), nn.ReLU())
        self.num_heads = heads
        for h in range(heads):
            setattr(self, f"top_layer{h}", nn.Linear(fc, clusters))

    def forward(self, x: Tensor) -> list[Tensor]:
        """Logits of every head."""
        return self.heads(self.embed(x))

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features (the heads' input)."""
        return self.classifier(self.features(x).flatten(1))

    def heads(self, z: Tensor) -> list[Tensor]:
        """Logits of every head from penultimate features."""
        return [getattr(self, f"top_layer{h}")(z) for h in range(self.num_heads)]


def sinkhorn_labels(logits: Tensor, lamb: float = 25.0, iters: int = 200, tol: float = 1e-6) -> Tensor:
    """Equipartitioned pseudo-labels: argmax of the Sinkhorn-Knopp transport plan of P^λ (rows N, columns K)."""
    n, k = logits.shape
    log_q = lamb * F.log_softmax(logits.double(), dim=1)
    for _ in range(iters):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(k)  # each column sums to 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(n)  # each row sums to 1/N
        if float((torch.logsumexp(log_q, dim=0) + math.log(k)).abs().max()) < tol:
            break
    return log_q.argmax(1)


class SelaModule(OneCycleModule):
    """Cross-entropy on Sinkhorn pseudo-labels, re-estimated `updates_per_epoch` times per epoch."""

    def __init__(self, net: SelaAlexNet, images: Tensor, views: Tensor, lr: float, weight_decay: float,
                 total_steps: int, steps_per_epoch: int, updates_per_epoch: int, shift: int, lamb: float,
                 rotation_weight: float = 0.0) -> None:
        super().__init__(lr, weight_decay, total_steps, optimizer="adamw")
        self.net, self.images, self.views, self.shift, self.lamb = net, images, views, shift, lamb
        self.rotation_weight = rotation_weight
        self.rotation_head = nn.Linear(net.classifier[-2].out_features, 4)  # not saved: the pretext's own head
        self.update_at = {round(i * steps_per_epoch / updates_per_epoch) for i in range(updates_per_epoch)}
        self.pseudo = torch.zeros(net.num_heads, len(images), dtype=torch.long)

    @torch.no_grad()
    def update_labels(self) -> None:
        """Re-estimate every head's pseudo-labels on the un-augmented train scenes."""
        was_training = self.net.training
        self.net.eval()
        logits = predict(lambda x: torch.stack(self.net(x), dim=1), self.images)  # N×H×K
        self.net.train(was_training)
        for h in range(self.net.num_heads):
            self.pseudo[h] = sinkhorn_labels(logits[:, h], self.lamb)

    def on_train_batch_start(self, batch: list[Tensor], batch_idx: int) -> None:
        if batch_idx in self.update_at:
            self.update_labels()
            used = [int(torch.bincount(self.pseudo[h]).gt(0).sum()) for h in range(self.net.num_heads)]
            print(f"  labels updated at step {self.global_step}: clusters used per head {used}", flush=True)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        (index,) = batch
        pick = torch.randint(0, self.views.shape[1], (len(index),))
        x = random_shift(random_flip(color_augment(self.views[index, pick])), self.shift)
        if self.rotation_weight > 0:  # RotNet's pretext beside the self-labels: each scene turned by its own k·90°
            k = torch.randint(0, 4, (len(x),), device=x.device)
            turned = x
            for turns in range(1, 4):
                turned = torch.where((k == turns).view(-1, 1, 1, 1), torch.rot90(x, turns, dims=(2, 3)), turned)
            x = turned
        z = self.net.embed(x)
        outputs = self.net.heads(z)
        loss = sum(F.cross_entropy(out, self.pseudo[h, index]) for h, out in enumerate(outputs)) / len(outputs)
        self.log("loss", loss, on_step=False, on_epoch=True)
        if self.rotation_weight > 0:
            rotation = F.cross_entropy(self.rotation_head(z), k)
            self.log("rotation_loss", rotation, on_step=False, on_epoch=True)
            loss = loss + self.rotation_weight * rotation
        return loss


def main() -> None:
    """Train, save in the SeLa layout, reload through ssl_models.load, check AGF, probe."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--widths", type=int, nargs=5, default=(32, 64, 96, 64, 64))
    p.add_argument("--fc", type=int, default=512)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--clusters", type=int, default=12)
    p.add_argument("--views", type=int, default=3, help="extra renderings of each train scene")
    p.add_argument("--rotation-weight", type=float, default=0.0, help="weight of the auxiliary rotation loss")
    p.add_argument("--updates-per-epoch", type=int, default=2)
    p.add_argument("--lamb", type=float, default=25.0)
    p.add_argument("--shift", type=int, default=8)
    add_run_options(p, lr=1e-3, weight_decay=0.01, out=str(ASSETS / "sela.pth"), probe=True)
    args = p.parse_args()
    setup(args.seed, args.threads)
    import ssl_models
    from linear_probe_eval import probe_model

    train = load_split("train", args.train_size, "single", seed=args.seed)
    test = load_split("test", 1200, "single", seed=args.seed)
    net = SelaAlexNet(tuple(args.widths), args.fc, args.heads, args.clusters)
    index = torch.arange(len(train))
    views = torch.cat([train.images.unsqueeze(1), load_views("train", args.train_size, args.views, seed=args.seed)], 1)
    loader = tensor_loader(index, batch_size=args.batch_size, seed=args.seed)
    module = SelaModule(net, train.images, views, args.lr, args.weight_decay, args.epochs * len(loader), len(loader),
                        args.updates_per_epoch, args.shift, args.lamb, args.rotation_weight)
    clock = Clock()
    make_trainer(args.epochs, args.max_minutes, stop_after_epochs=args.stop_after_epochs).fit(module, loader)
    train_s, train_cpu_s = clock.seconds()

    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    ssl_models.save_checkpoint(state, args.out)  # released SeLa AlexNets are plain state_dicts
    model = ssl_models.load(args.out, kind="sela")
    net.eval()
    with torch.no_grad():
        x = to_input(test.images[:8])
        for h in range(args.heads):
            if not torch.allclose(model.select_head(h)(x), net(x)[h], atol=1e-5):
                raise RuntimeError(f"the reloaded SeLa model does not reproduce head {h} of the trained network")
    model.select_head(0)
    report = {"train_seconds": train_s, "train_cpu_seconds": train_cpu_s, "epochs": args.epochs, "train_size": args.train_size,
              "heads": args.heads, "clusters": args.clusters, "rotation_weight": args.rotation_weight,
              "params": sum(p.numel() for p in model.parameters()), "checkpoint_mb": file_mb(args.out)}
    report.update(cluster_scores(model, test, args.heads))
    if args.probe_train_size > 0:  # 0 skips it (linear_probe_eval.py measures it later)
        report.update(probe_model(model, args.probe_train_size, seed=args.seed))
    write_report("sela", report)
    agf_check(model, test.images[:2])  # after the report: a failure here must not lose the numbers


def cluster_scores(model: nn.Module, test: SceneTensors, heads: int) -> dict[str, float]:
    """Per head: accuracy of the best one-to-one cluster→class assignment (Hungarian) on the test split."""
    out = {}
    for h in range(heads):
        model.select_head(h)
        pred = predict(model, test.images).argmax(1)
        out[f"head{h}_hungarian_acc"] = hungarian_accuracy(pred, test.labels, int(model.head.out_features))
    model.select_head(0)
    return out


if __name__ == "__main__":
    main()
