"""Train a tiny DINO-style self-supervised ViT on the scenes and save it in DINO's full-checkpoint layout.

    OMP_NUM_THREADS=2 python experiments/train_dino_vit.py --threads 2   # writes ssl_models/assets/dino_vit.pth

Self-distillation without labels (Caron et al. 2021): a student ViT + DINOHead is trained to match a momentum
teacher's centred, sharpened output across crops. Anti-collapse recipe: teacher centring (momentum 0.9) and
sharpening (teacher temperature 0.04, student 0.1), multi-crop (2 global 128-px crops — taken from two renderings
of the same scene — through both networks, small 64-px local crops through the student only), teacher momentum
0.996 → 1 (cosine), the weight-normalised last layer frozen during the first epoch, gradient clipping, AdamW with
linear warm-up then cosine decay. Backbone = the supervised tiny ViT's architecture (mean pooling, 4 heads).

Monitored after every epoch on held-out scenes (labels read only here): mean per-image entropy of the teacher's
softmax, entropy of its batch-mean (collapse to one cluster → 0; to uniform → per-image entropy = log K), the
number of distinct arg-max clusters, and kNN-20 accuracy of the backbone features. The run stops (exit code 2)
if the teacher collapses. The saved file loads with `ssl_models.load(path)` (kind "dino_vit", the teacher).

Status (docs/dev-notes/issue-17b.md): on 2 shared CPU cores (≤ 4 epochs of 60–70 steps in 15 min) every variant
tried —
this recipe, lr 1e-3, gentler crops, teacher temperature 0.02, one rendering per scene — drifted towards the
uniform collapse with kNN-20 at chance (8–11 %); no asset is shipped. Logs: experiments/results/vit/dino_vit_*.log.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
from argparse import Namespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from train_common import ASSETS, Clock, color_augment, file_mb, load_split, load_views, predict, setup, write_report
from train_moco import knn_accuracy


class DINOHead(nn.Module):
    """DINO's projection head: MLP (GELU) → bottleneck → L2 normalisation → weight-normed last layer (g = 1)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad_(False)  # norm_last_layer=True

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class DINONet(nn.Module):
    """backbone (tiny ViT, features) ▸ head (DINOHead); accepts any input side that is a multiple of the patch."""

    def __init__(self, backbone: nn.Module, head: DINOHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def features(self, x: Tensor) -> Tensor:
        """Mean-pooled features; position codes resized (bicubic) for crops smaller than the training size."""
        vit = self.backbone
        t = vit.patch_embed(x)
        pos = vit.pos_embed[:, 1:]
        side, grid = x.shape[-1] // vit.patch_embed.patch_size, round(pos.shape[1] ** 0.5)
        if side != grid:
            pos = F.interpolate(pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2), size=(side, side),
                                mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, side * side, -1)
        t = torch.cat([vit.cls_token.expand(t.shape[0], -1, -1) + vit.pos_embed[:, :1], t + pos], dim=1)
        for block in vit.blocks:
            t = block(t)
        return vit.norm(t[:, 1:].mean(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def random_resized_crops(images: Tensor, out: int, scale: tuple[float, float], gen: torch.Generator) -> Tensor:
    """Per-image random square crops (area fraction in `scale`), resized to out×out, random mirror."""
    b = images.shape[0]
    area = torch.empty(b).uniform_(*scale, generator=gen)
    s = area.sqrt()  # crop side as a fraction of the image
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - s)
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - s)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = s * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = s, cy
    grid = F.affine_grid(theta, [b, 3, out, out], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def dino_loss(student: Tensor, teacher: Tensor, center: Tensor, n_global: int, n_crops: int, s_temp: float,
              t_temp: float) -> Tensor:
    """Cross-entropy between the centred, sharpened teacher (global crops) and the student (all other crops)."""
    s = (student / s_temp).log_softmax(-1).chunk(n_crops)
    t = ((teacher - center) / t_temp).softmax(-1).detach().chunk(n_global)
    total, pairs = student.new_zeros(()), 0
    for i, ti in enumerate(t):
        for j, sj in enumerate(s):
            if i != j:
                total = total - (ti * sj).sum(-1).mean()
                pairs += 1
    return total / pairs


@torch.no_grad()
def monitor(net: DINONet, bank: Tensor, bank_labels: Tensor, query: Tensor, query_labels: Tensor, center: Tensor,
            t_temp: float) -> dict[str, float]:
    """Teacher entropy (per image, of the mean), distinct arg-max clusters and kNN-20 accuracy on held-out scenes."""
    net.eval()
    q_feats = predict(net.features, query)
    logits = net.head(q_feats)
    p = ((logits - center) / t_temp).softmax(-1)
    per_image = float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())
    mean_p = p.mean(0)
    knn = knn_accuracy(predict(net.features, bank), bank_labels, q_feats, query_labels)
    return {"teacher_entropy": per_image, "entropy_of_mean": float(-(mean_p * mean_p.clamp_min(1e-12).log()).sum()),
            "clusters_used": int(logits.argmax(1).unique().numel()), "knn20": knn}


def main() -> None:
    """Train, monitor, save in the DINO full layout, reload through ssl_models.load and check it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--views", type=int, default=3, help="extra renderings per train scene (global-crop pairs)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out-dim", type=int, default=256, help="K prototypes of the DINOHead")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--local-crops", type=int, default=4)
    p.add_argument("--local-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--pos-scale", type=float, default=0.1,
                   help="start the position codes at this multiple of the sin-cos codes (content, not position, "
                   "then dominates the initial features: 0.38 → 0.90 between-image variance share)")
    p.add_argument("--same-rendering-prob", type=float, default=0.0,
                   help="fraction of scenes whose two global crops come from one rendering")
    p.add_argument("--global-scale", type=float, nargs=2, default=(0.5, 1.0))
    p.add_argument("--local-scale", type=float, nargs=2, default=(0.1, 0.4))
    p.add_argument("--weight-decay", type=float, default=0.04)
    p.add_argument("--student-temp", type=float, default=0.1)
    p.add_argument("--teacher-temp", type=float, default=0.04)
    p.add_argument("--warmup-teacher-temp", type=float, default=0.04)
    p.add_argument("--warmup-teacher-epochs", type=int, default=2)
    p.add_argument("--momentum-teacher", type=float, default=0.996)
    p.add_argument("--center-momentum", type=float, default=0.9)
    p.add_argument("--freeze-last-layer-epochs", type=int, default=1)
    p.add_argument("--clip-grad", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-minutes", type=float, default=15.0, help="safety stop after this many minutes")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: train-size // batch-size")
    p.add_argument("--out", default=str(ASSETS / "dino_vit.pth"))
    args = p.parse_args()
    setup(args.seed, args.threads)
    import ssl_models
    from sslx.models.vit import TINY_VIT, tiny_vit

    train = load_split("train", args.train_size, "single", seed=args.seed)
    views = torch.cat([train.images.unsqueeze(1), load_views("train", args.train_size, args.views, seed=args.seed)], 1)
    test = load_split("test", 1200, "single", seed=args.seed)
    bank, bank_labels = train.images[:2000], train.labels[:2000]  # labels for monitoring only
    query, query_labels = test.images[:600], test.labels[:600]

    student = DINONet(tiny_vit(0), DINOHead(TINY_VIT["embed_dim"], args.out_dim, args.hidden, args.bottleneck))
    with torch.no_grad():
        student.backbone.pos_embed.mul_(args.pos_scale)
    teacher = copy.deepcopy(student)
    for q in teacher.parameters():
        q.requires_grad_(False)
    params = [q for q in student.parameters() if q.requires_grad]
    opt = torch.optim.AdamW([{"params": [q for q in params if q.ndim > 1], "weight_decay": args.weight_decay},
                             {"params": [q for q in params if q.ndim <= 1], "weight_decay": 0.0}], lr=args.lr)
    steps = args.steps_per_epoch or args.train_size // args.batch_size
    total, warm = args.epochs * steps, steps
    lr_at = lambda s: args.lr * ((s + 1) / warm if s < warm else  # noqa: E731
                                 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    center = torch.zeros(1, args.out_dim)
    n_crops = 2 + args.local_crops
    gen = torch.Generator().manual_seed(args.seed)
    clock, step, history = Clock(), 0, []
    print(f"epoch 0 {monitor(teacher, bank, bank_labels, query, query_labels, center, args.teacher_temp)}", flush=True)
    for epoch in range(args.epochs):
        student.train()
        t_temp = (args.warmup_teacher_temp + (args.teacher_temp - args.warmup_teacher_temp)
                  * min(1.0, epoch / max(1, args.warmup_teacher_epochs)))
        order = torch.randperm(args.train_size, generator=gen)
        loss_sum = 0.0
        for i in range(steps):
            idx = order[(i * args.batch_size) % args.train_size:][:args.batch_size]
            pick = torch.stack([torch.randperm(views.shape[1], generator=gen)[:2] for _ in idx])
            same = torch.rand(len(idx), generator=gen) < args.same_rendering_prob
            pick[same, 1] = pick[same, 0]
            pair = views[idx[:, None], pick]  # B×2×3×H×W: two renderings of each scene
            src = torch.cat([color_augment(pair[:, 0]), color_augment(pair[:, 1])])
            globals_ = random_resized_crops(src, TINY_VIT["img_size"], tuple(args.global_scale), gen)
            locals_ = None
            if args.local_crops:
                sources = src[torch.randint(0, 2 * len(idx), (args.local_crops * len(idx),), generator=gen)]
                locals_ = random_resized_crops(sources, args.local_size, tuple(args.local_scale), gen)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            with torch.no_grad():
                t_out = teacher(globals_)
            s_out = student(globals_) if locals_ is None else torch.cat([student(globals_), student(locals_)])
            loss = dino_loss(s_out, t_out, center, 2, n_crops, args.student_temp, t_temp)
            if not torch.isfinite(loss):
                sys.exit(f"loss is {float(loss)} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
            if epoch < args.freeze_last_layer_epochs:
                for q in student.head.last_layer.parameters():
                    q.grad = None
            opt.step()
            m = 1 - (1 - args.momentum_teacher) * (math.cos(math.pi * step / total) + 1) / 2
            with torch.no_grad():
                for qs, qt in zip(student.parameters(), teacher.parameters()):
                    qt.mul_(m).add_(qs.detach(), alpha=1 - m)
                center.mul_(args.center_momentum).add_(t_out.mean(0, keepdim=True), alpha=1 - args.center_momentum)
            loss_sum += float(loss.detach())
            step += 1
        stats = monitor(teacher, bank, bank_labels, query, query_labels, center, args.teacher_temp)
        wall, cpu = clock.seconds()
        history.append({"epoch": epoch + 1, "loss": loss_sum / steps, **stats})
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss_sum / steps:.4f} {stats} {wall:.0f}s wall {cpu:.0f}s cpu",
              flush=True)
        if epoch >= 1 and (stats["clusters_used"] <= 1 or stats["teacher_entropy"] > 0.98 * math.log(args.out_dim)):
            sys.exit(f"collapsed at epoch {epoch + 1}: {stats}")
        if wall > args.max_minutes * 60:
            print("safety stop: --max-minutes reached", flush=True)
            break
    train_s, train_cpu_s = clock.seconds()

    def prefixed(net: DINONet, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}{k}": v.detach().clone() for k, v in net.state_dict().items()}

    run_args = Namespace(**{k: v for k, v in vars(args).items() if k != "out"}, arch="sslx_tiny_vit",
                         patch_size=TINY_VIT["patch_size"], num_heads=TINY_VIT["num_heads"],
                         token_pooling=TINY_VIT["pool"])
    ssl_models.save_checkpoint({"teacher": prefixed(teacher, ""), "student": prefixed(student, "module."),
                                "epoch": len(history), "args": run_args,
                                "dino_loss": {"center": center.clone()}}, args.out)
    model = ssl_models.load(args.out)
    x = torch.randn(4, 3, TINY_VIT["img_size"], TINY_VIT["img_size"])
    with torch.no_grad():
        teacher.eval()
        if not torch.allclose(model(x), teacher(x),
                              atol=1e-5):
            raise RuntimeError("the reloaded DINO ViT does not reproduce the trained teacher")
    write_report("dino_vit", {"train_seconds": train_s, "train_cpu_seconds": train_cpu_s, "epochs": len(history),
                              "train_size": args.train_size, "threads": args.threads, "history": history,
                              "checkpoint_mb": file_mb(args.out),
                              "params": sum(q.numel() for q in teacher.parameters())})


if __name__ == "__main__":
    main()
