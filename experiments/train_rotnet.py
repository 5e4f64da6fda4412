"""Train the embedded RotNet (4-way rotation prediction, BN AlexNet) and save it in the RotNet layout.

    python experiments/train_rotnet.py            # writes ssl_models/assets/rotnet.pth

Every batch holds the four rotations (torch.rot90, k = 0..3) of each scene; the label is k. The
pretext scenes are the benchmark's own (mixed single- and two-object): their shapes stand upright and
none is symmetric under a quarter turn, so the rotation of a scene is identifiable (docs/benchmark.md).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models.alexnet import CONV_GEOMETRY

from train_common import (ASSETS, Clock, OneCycleModule, add_run_options, agf_check, file_mb, load_split,
                          make_trainer, predict, random_shift, setup, tensor_loader, to_input, write_report)


class RotNetAlexNet(nn.Module):
    """Gidaris' RotNet AlexNet: `_feature_blocks` 0..9 = conv1, pool1, conv2, pool2, conv3-5, pool5, fc, classifier."""

    def __init__(self, widths: tuple[int, ...], fc: int, input_size: int = 128) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        cin, side = 3, input_size
        for i, (width, (k, s, p)) in enumerate(zip(widths, CONV_GEOMETRY)):
            blocks.append(nn.Sequential(nn.Conv2d(cin, width, k, stride=s, padding=p), nn.BatchNorm2d(width),
                                        nn.ReLU()))
            side = (side + 2 * p - k) // s + 1
            if i in (0, 1, 4):
                blocks.append(nn.MaxPool2d(3, stride=2))
                side = (side - 3) // 2 + 1
            cin = width
        blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(cin * side * side, fc, bias=False), nn.BatchNorm1d(fc),
                                    nn.ReLU(), nn.Linear(fc, fc, bias=False), nn.BatchNorm1d(fc), nn.ReLU()))
        blocks.append(nn.Sequential(nn.Linear(fc, 4)))
        self._feature_blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Rotation logits B×4."""
        for block in self._feature_blocks:
            x = block(x)
        return x


def four_rotations(x: Tensor) -> tuple[Tensor, Tensor]:
    """The batch rotated by 0, 90, 180, 270 degrees (torch.rot90 k = 0..3) and the rotation labels."""
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


class RotNetModule(OneCycleModule):
    """Rotation-prediction pretext on uint8 scenes."""

    def __init__(self, net: nn.Module, lr: float, weight_decay: float, total_steps: int, shift: int) -> None:
        super().__init__(lr, weight_decay, total_steps, optimizer="adamw")
        self.net, self.shift = net, shift

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        # no mirroring: it would turn a right-pointing arrow or crescent into a left-pointing one
        x = random_shift(to_input(batch[0]), self.shift)
        x, y = four_rotations(x)
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.log("loss", loss, on_step=False, on_epoch=True)
        self.log("rot_acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss


@torch.no_grad()
def rotation_accuracy(model: nn.Module, images: Tensor) -> float:
    """Accuracy of predicting k for all four rotations of every scene (model in eval mode)."""
    model.eval()
    correct = 0
    for k in range(4):
        logits = predict(lambda x: model(torch.rot90(x, k, dims=(2, 3))), images)
        correct += int((logits.argmax(1) == k).sum())
    return correct / (4 * len(images))


def rotnet_state(net: nn.Module) -> dict[str, Tensor]:
    """The state_dict as RotNet files store it: a plain dict, no num_batches_tracked, no _metadata."""
    return {k: v.detach().clone() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def main() -> None:
    """Train, evaluate, save, reload through ssl_models.load and check AGF."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=32, help="scenes per batch (x4 rotations)")
    p.add_argument("--widths", type=int, nargs=5, default=(32, 64, 96, 64, 64))
    p.add_argument("--fc", type=int, default=512)
    p.add_argument("--shift", type=int, default=4)
    p.add_argument("--objects", default="mixed", choices=("single", "pair", "mixed"))
    add_run_options(p, lr=1e-3, weight_decay=0.01, out=str(ASSETS / "rotnet.pth"), probe=True)
    args = p.parse_args()
    setup(args.seed, args.threads)
    import ssl_models
    from linear_probe_eval import probe_model

    t0 = time.time()
    train = load_split("train", args.train_size, args.objects, args.seed)
    test = {objects: load_split("test", 1200, objects, args.seed) for objects in ("single", "pair")}
    print(f"data ready in {time.time() - t0:.0f}s", flush=True)

    net = RotNetAlexNet(tuple(args.widths), args.fc)
    loader = tensor_loader(train.images, batch_size=args.batch_size, seed=args.seed)
    module = RotNetModule(net, args.lr, args.weight_decay, args.epochs * len(loader), args.shift)
    clock = Clock()
    make_trainer(args.epochs, args.max_minutes, stop_after_epochs=args.stop_after_epochs).fit(module, loader)
    train_s, train_cpu_s = clock.seconds()

    state = rotnet_state(net)
    ssl_models.save_checkpoint({"epoch": args.epochs, "network": state}, args.out)
    model = ssl_models.load(args.out, kind="rotnet")
    x = test["single"].images[:8]
    with torch.no_grad():
        net.eval()
        same = torch.allclose(model(to_input(x)), net(to_input(x)), atol=1e-5)
    if not same:
        raise RuntimeError("the reloaded RotNet does not reproduce the trained network")

    report = {"train_seconds": train_s, "train_cpu_seconds": train_cpu_s, "epochs": args.epochs, "train_size": args.train_size,
              "objects": args.objects,
              **{f"rot_acc_test_{objects}": rotation_accuracy(model, t.images) for objects, t in test.items()},
              "params": sum(p.numel() for p in model.parameters()), "checkpoint_mb": file_mb(args.out)}
    if args.probe_train_size > 0:  # 0 skips it (linear_probe_eval.py measures it later)
        report.update(probe_model(model, args.probe_train_size, seed=args.seed))
    write_report("rotnet", report)
    agf_check(model, x[:2])  # after the report: a failure here must not lose the numbers


if __name__ == "__main__":
    main()
