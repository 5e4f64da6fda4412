"""Train the embedded SCAN model (SimCLR pretext, kNN mining, SCAN clustering loss) and save it in the SCAN layout.

    python experiments/train_scan.py               # writes ssl_models/assets/scan.pth

1. Pretext: SimCLR (NT-Xent on two augmented views) trains a small ResNet(Bottleneck) backbone
   with an MLP contrastive head (not saved, as in SCAN's clustering files). A positive pair is two
   renderings of the same objects (`scene_tensors.load_views`: geometry kept, background, position,
   colours and texture drawn anew), each colour-jittered, mirrored and cropped; labels are never read.
2. Mining: the `knn` nearest neighbours of every train scene in L2-normalised backbone features,
   averaged over the scene's renderings (`--no-cluster-on-renderings`: the scene alone).
3. SCAN: several linear cluster heads are trained on the frozen backbone (SCAN's ImageNet setting:
   heads only) with the SCAN loss, consistency with a neighbour minus `entropy_weight` × entropy of
   the mean prediction; anchor and neighbour each show a random rendering. The best head is the one
   with the lowest SCAN loss on the val split.
Saved as {'model': backbone.* + cluster_head.{h}.*, 'head': numpy.int64(best)}.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train_common import (ASSETS, Clock, OneCycleModule, add_run_options, agf_check, batched, color_augment, file_mb,
                          hungarian_accuracy, load_split, load_views, make_trainer, predict, setup, tensor_loader, to_input,
                          write_report)


def resnet_backbone(widths: tuple[int, ...], stem_width: int) -> nn.Module:
    """SmallResNet without its classifier (fc = Identity): images → B×(4·widths[-1]) pooled features."""
    from sslx.models import SmallResNet

    net = SmallResNet(widths=widths, depths=(1, 1, 1, 1), stem_width=stem_width, num_classes=1)
    net.fc = nn.Identity()
    return net


def random_view(images: Tensor) -> Tensor:
    """A SimCLR view of uint8 scenes: colour augmentation, then a random mirror and zoom-in crop (no turn: scenes are upright)."""
    x = color_augment(images)
    b = x.shape[0]
    scale = 0.75 + 0.25 * torch.rand(b)                    # fraction of the image side the view covers
    mirror = torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
    shift = (1 - scale).unsqueeze(1) * (2 * torch.rand(b, 2) - 1)
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([mirror * scale, zero, shift[:, 0]], 1),
                         torch.stack([zero, scale, shift[:, 1]], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def two_renderings(views: Tensor, same_prob: float = 0.0) -> tuple[Tensor, Tensor]:
    """uint8 B×V×3×H×W renderings of each scene → two per scene (B×3×H×W each), the same one with `same_prob`."""
    b, v = views.shape[:2]
    first = torch.randint(0, v, (b,))
    second = (first + torch.randint(1, v, (b,))) % v       # another rendering ...
    second = torch.where(torch.rand(b) < same_prob, first, second)  # ... or, sometimes, the same one again
    rows = torch.arange(b)
    return views[rows, first], views[rows, second]


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's normalised-temperature cross-entropy over 2B views (positive = the other view of the image)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = z1.shape[0]
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def rotate_pairs(x: Tensor) -> tuple[Tensor, Tensor]:
    """2B views (pairs i, B+i) → each pair turned by its own random k·90° (both views alike), and the labels k."""
    b = x.shape[0] // 2
    k = torch.randint(0, 4, (b,), device=x.device).repeat(2)
    out = x
    for turns in range(1, 4):
        out = torch.where((k == turns).view(-1, 1, 1, 1), torch.rot90(x, turns, dims=(2, 3)), out)
    return out, k


class SimCLRModule(OneCycleModule):
    """Contrastive pretext: backbone + MLP head, NT-Xent on two renderings of each scene's objects.

    `same_prob`: fraction of pairs that are two augmentations of one rendering (easy positives, which
    start the learning); the rest pair two renderings. `rotation_weight` > 0 adds RotNet's pretext:
    both views of a pair are turned by the same random k·90° and a linear head predicts k (the shapes
    are upright, so this needs shape features; the head is not saved). The first `low_res_epochs`
    epochs see the views 2×2-average-pooled (4× cheaper), the rest full size.
    """

    def __init__(self, backbone: nn.Module, dim: int, proj: int, temperature: float, lr: float,
                 weight_decay: float, total_steps: int, low_res_epochs: int, same_prob: float = 0.0,
                 rotation_weight: float = 0.0, contrastive_weight: float = 1.0) -> None:
        super().__init__(lr, weight_decay, total_steps, optimizer="adamw")
        self.backbone = backbone
        self.contrastive_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, proj))
        self.rotation_head = nn.Linear(dim, 4)
        self.temperature, self.low_res_epochs = temperature, low_res_epochs
        self.same_prob, self.rotation_weight, self.contrastive_weight = same_prob, rotation_weight, contrastive_weight

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        a, b = two_renderings(batch[0], self.same_prob)
        x = torch.cat([random_view(a), random_view(b)])
        if self.current_epoch < self.low_res_epochs:
            x = F.avg_pool2d(x, 2)
        if self.rotation_weight > 0:
            x, k = rotate_pairs(x)
        h = self.backbone(x)
        z1, z2 = self.contrastive_head(h).chunk(2)
        contrastive = nt_xent(z1, z2, self.temperature)
        self.log("simclr_loss", contrastive, on_step=False, on_epoch=True)
        loss = self.contrastive_weight * contrastive
        if self.rotation_weight > 0:
            rotation = F.cross_entropy(self.rotation_head(h), k)
            self.log("rotation_loss", rotation, on_step=False, on_epoch=True)
            loss = loss + self.rotation_weight * rotation
        return loss


def mine_neighbours(features: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Indices N×k of each row's k most cosine-similar other rows."""
    z = F.normalize(features.float(), dim=1)
    out = []
    for s in batched(len(z), chunk):
        sim = z[s] @ z.T
        sim[torch.arange(sim.shape[0]), torch.arange(s.start, s.stop)] = float("-inf")  # not itself
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out)


def scan_loss(anchor_logits: Tensor, neighbour_logits: Tensor, entropy_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """(total, consistency, entropy) of the SCAN objective for one head."""
    pa, pn = anchor_logits.softmax(1), neighbour_logits.softmax(1)
    consistency = -torch.log((pa * pn).sum(1).clamp_min(1e-8)).mean()
    mean_p = pa.mean(0).clamp_min(1e-8)
    entropy = -(mean_p * mean_p.log()).sum()
    return consistency - entropy_weight * entropy, consistency, entropy


def train_heads(features: Tensor, neighbours: Tensor, heads: nn.ModuleList, epochs: int, batch_size: int,
                lr: float, entropy_weight: float, seed: int) -> None:
    """SCAN on frozen features: each anchor is paired with one random neighbour per step.

    `features` N×D, or N×V×D for V renderings of each scene: then anchor and neighbour each show a
    random rendering (SCAN's augmentation of both sides, here on frozen features).
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(heads.parameters(), lr=lr, weight_decay=1e-4)
    n = len(features)

    def rendering(idx: Tensor) -> Tensor:
        if features.dim() == 2:
            return features[idx]
        return features[idx, torch.randint(0, features.shape[1], (len(idx),), generator=gen)]

    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        totals = torch.zeros(len(heads))
        for s in batched(n, batch_size):
            idx = order[s]
            pick = neighbours[idx, torch.randint(0, neighbours.shape[1], (len(idx),), generator=gen)]
            anchor, neighbour = rendering(idx), rendering(pick)
            losses = [scan_loss(h(anchor), h(neighbour), entropy_weight)[0] for h in heads]
            opt.zero_grad()
            torch.stack(losses).sum().backward()
            opt.step()
            totals += torch.stack(losses).detach() * len(idx) / n
        if epoch == 0 or (epoch + 1) % 10 == 0:
            print(f"  SCAN heads epoch {epoch + 1}/{epochs}: loss per head {[round(float(t), 4) for t in totals]}",
                  flush=True)


@torch.no_grad()
def heads_val_loss(features: Tensor, neighbours: Tensor, heads: nn.ModuleList, entropy_weight: float) -> list[float]:
    """SCAN loss of every head on a held-out set, each anchor averaged over all its mined neighbours."""
    out = []
    for h in heads:
        anchor = h(features)
        total = 0.0
        for j in range(neighbours.shape[1]):
            total += float(scan_loss(anchor, h(features[neighbours[:, j]]), entropy_weight)[0])
        out.append(total / neighbours.shape[1])
    return out


def main() -> None:
    """Pretext, mining, SCAN heads, save in the SCAN layout, reload through ssl_models.load, AGF, probe."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretext-epochs", type=int, default=17)
    p.add_argument("--low-res-epochs", type=int, default=16, help="leading pretext epochs at half resolution")
    p.add_argument("--views", type=int, default=3, help="extra renderings of each train scene (positives)")
    p.add_argument("--same-prob", type=float, default=0.5, help="fraction of pairs made from one rendering")
    p.add_argument("--rotation-weight", type=float, default=0.0, help="weight of the auxiliary rotation loss")
    p.add_argument("--contrastive-weight", type=float, default=1.0, help="weight of the NT-Xent loss (0: rotation only)")
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64, help="scenes per SimCLR batch (2 views each)")
    p.add_argument("--widths", type=int, nargs=4, default=(16, 32, 64, 128))
    p.add_argument("--stem-width", type=int, default=16)
    p.add_argument("--proj", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--knn", type=int, default=20)
    p.add_argument("--heads", type=int, default=5)
    p.add_argument("--clusters", type=int, default=12)
    p.add_argument("--scan-epochs", type=int, default=60)
    p.add_argument("--entropy-weight", type=float, default=5.0)
    p.add_argument("--cluster-on-renderings", action=argparse.BooleanOptionalAction, default=True,
                   help="mine neighbours on features averaged over each scene's renderings and train the heads "
                        "on random renderings (off: the scenes alone)")
    p.add_argument("--pretext-from", default=None,
                   help="skip the pretext: take the backbone of this SCAN file and redo mining and clustering")
    add_run_options(p, lr=2e-3, weight_decay=0.01, out=str(ASSETS / "scan.pth"), probe=True,
                    lr_help="peak one-cycle AdamW learning rate (pretext)")
    args = p.parse_args()
    setup(args.seed, args.threads)
    import ssl_models
    from linear_probe_eval import probe_model

    train = load_split("train", args.train_size, "single", seed=args.seed)
    val = load_split("val", 1200, "single", seed=args.seed)
    test = load_split("test", 1200, "single", seed=args.seed)
    backbone = resnet_backbone(tuple(args.widths), args.stem_width)
    dim = 4 * args.widths[-1]
    views = torch.cat([train.images.unsqueeze(1), load_views("train", args.train_size, args.views, seed=args.seed)], 1)
    loader = tensor_loader(views, batch_size=args.batch_size, seed=args.seed)
    clock = Clock()
    if args.pretext_from is None:
        module = SimCLRModule(backbone, dim, args.proj, args.temperature, args.lr, args.weight_decay,
                              args.pretext_epochs * len(loader), args.low_res_epochs, args.same_prob,
                              args.rotation_weight, args.contrastive_weight)
        make_trainer(args.pretext_epochs, args.max_minutes, stop_after_epochs=args.stop_after_epochs).fit(module, loader)
    else:
        backbone.load_state_dict(ssl_models.load(args.pretext_from, kind="scan").backbone.state_dict())
    pretext_s, pretext_cpu_s = clock.seconds()

    backbone.eval()
    feats = {name: predict(backbone, split.images) for name, split in (("train", train), ("val", val))}
    neighbours = {"val": mine_neighbours(feats["val"], args.knn)}
    head_inputs = feats["train"]
    if args.cluster_on_renderings:
        head_inputs = torch.stack([feats["train"]] + [predict(backbone, views[:, v].contiguous())
                                                      for v in range(1, views.shape[1])], 1)
        neighbours["train"] = mine_neighbours(F.normalize(head_inputs, dim=2).mean(1), args.knn)
    else:
        neighbours["train"] = mine_neighbours(feats["train"], args.knn)
    purity = float((train.labels[neighbours["train"]] == train.labels[:, None]).double().mean())
    print(f"pretext done in {pretext_s:.0f}s; train kNN (k={args.knn}) label purity {purity:.4f}", flush=True)

    torch.manual_seed(args.seed)
    heads = nn.ModuleList(nn.Linear(dim, args.clusters) for _ in range(args.heads))
    train_heads(head_inputs, neighbours["train"], heads, args.scan_epochs, 256, 1e-3, args.entropy_weight,
                args.seed)
    val_losses = heads_val_loss(feats["val"], neighbours["val"], heads, args.entropy_weight)
    best = int(np.argmin(val_losses))
    total_s, total_cpu_s = clock.seconds()

    state = {f"backbone.{k}": v.detach().clone() for k, v in backbone.state_dict().items()}
    for h, head in enumerate(heads):
        state.update({f"cluster_head.{h}.{k}": v.detach().clone() for k, v in head.state_dict().items()})
    ssl_models.save_checkpoint({"model": state, "head": np.int64(best)}, args.out)
    model = ssl_models.load(args.out, kind="scan")
    if model.head_index != best:
        raise RuntimeError(f"ssl_models.load selected head {model.head_index}, the file stores {best}")
    with torch.no_grad():
        x = to_input(test.images[:8])
        if not torch.allclose(model(x), heads[best](backbone(x)), atol=1e-5):
            raise RuntimeError("the reloaded SCAN model does not reproduce the trained network")

    test_pred = predict(model, test.images).argmax(1)
    report = {"views": args.views, "low_res_epochs": args.low_res_epochs, "same_prob": args.same_prob,
              "rotation_weight": args.rotation_weight, "contrastive_weight": args.contrastive_weight,
              "cluster_on_renderings": args.cluster_on_renderings, "pretext_from": args.pretext_from, "train_seconds": total_s, "train_cpu_seconds": total_cpu_s, "pretext_seconds": pretext_s,
              "pretext_cpu_seconds": pretext_cpu_s, "pretext_epochs": args.pretext_epochs,
              "train_size": args.train_size, "knn_purity": purity, "heads": args.heads, "best_head": best,
              "val_scan_losses": [round(v, 4) for v in val_losses],
              "test_hungarian_acc": hungarian_accuracy(test_pred, test.labels, args.clusters),
              "params": sum(p.numel() for p in model.parameters()), "checkpoint_mb": file_mb(args.out)}
    if args.probe_train_size > 0:  # 0 skips it (linear_probe_eval.py measures it later)
        report.update(probe_model(model, args.probe_train_size, seed=args.seed))
    write_report("scan", report)
    agf_check(model, test.images[:2])  # after the report: a failure here must not lose the numbers


if __name__ == "__main__":
    main()
