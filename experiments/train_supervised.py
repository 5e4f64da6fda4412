"""Train an embedded supervised classifier on single-object scenes and save it as an sslx asset.

    python experiments/train_supervised.py --arch vgg      # writes ssl_models/assets/supervised_vgg.pth
    python experiments/train_supervised.py --arch resnet   # writes ssl_models/assets/supervised_resnet.pth

The file is {'arch', 'config', 'state_dict', 'classes', 'metrics'}; `sslx.assets.load_embedded(arch)`
rebuilds the network from 'arch' and 'config' (sslx.models.build_classifier) and loads it strictly.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train_common import (ASSETS, Clock, OneCycleModule, add_run_options, agf_check, class_accuracy, file_mb, load_split, make_trainer,
                          predict, random_flip, random_shift, setup, tensor_loader, to_input, write_report)

DEFAULT_EPOCHS = {"vgg": 7, "resnet": 7}
DEFAULT_LOW_RES_EPOCHS = {"vgg": 6, "resnet": 5}


class SupervisedModule(OneCycleModule):
    """Cross-entropy training of a classifier on uint8 scenes with mirror / shift augmentation (no turns: the scenes are upright).

    Progressive resizing: the first `low_res_epochs` epochs see the scenes 2×2-average-pooled to half
    resolution (4× cheaper; the networks are fully convolutional up to an adaptive pool), the rest full size.
    """

    def __init__(self, net: nn.Module, lr: float, weight_decay: float, total_steps: int, shift: int,
                 label_smoothing: float, low_res_epochs: int) -> None:
        super().__init__(lr, weight_decay, total_steps, optimizer="adamw")
        self.net, self.shift, self.label_smoothing = net, shift, label_smoothing
        self.low_res_epochs = low_res_epochs

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        x = random_shift(random_flip(to_input(images)), self.shift)
        if self.current_epoch < self.low_res_epochs:
            x = F.avg_pool2d(x, 2)
        logits = self.net(x)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self.log("loss", loss, on_step=False, on_epoch=True)
        self.log("train_acc", (logits.argmax(1) == labels).float().mean(), on_step=False, on_epoch=True)
        return loss


def main() -> None:
    """Train, evaluate on the test split (single and pair scenes), save, reload and check AGF."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, choices=("vgg", "resnet"))
    p.add_argument("--epochs", type=int, default=None, help="default: 7")
    p.add_argument("--low-res-epochs", type=int, default=None,
                   help="leading epochs at half resolution (default: vgg 6, resnet 5)")
    p.add_argument("--train-size", type=int, default=9600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shift", type=int, default=8)
    p.add_argument("--label-smoothing", type=float, default=0.05)
    add_run_options(p, lr=3e-3, weight_decay=0.05, out=None, out_help="default: ssl_models/assets/supervised_<arch>.pth")
    args = p.parse_args()
    setup(args.seed, args.threads)
    import ssl_models
    from sslx.assets import load_supervised
    from sslx.data.scenes import SCENE_CLASSES
    from sslx.models import build_classifier
    from sslx.models.small import RESNET_DEFAULTS, VGG_DEFAULTS

    epochs = args.epochs or DEFAULT_EPOCHS[args.arch]
    low_res_epochs = DEFAULT_LOW_RES_EPOCHS[args.arch] if args.low_res_epochs is None else args.low_res_epochs
    out = args.out or str(ASSETS / f"supervised_{args.arch}.pth")
    train = load_split("train", args.train_size, "single", seed=args.seed)
    test = load_split("test", 1200, "single", seed=args.seed)
    test_pair = load_split("test", 1200, "pair", seed=args.seed)

    config = {k: list(v) if isinstance(v, tuple) else v
              for k, v in (VGG_DEFAULTS if args.arch == "vgg" else RESNET_DEFAULTS).items()}
    net = build_classifier(args.arch, config)
    loader = tensor_loader(train.images, train.labels, batch_size=args.batch_size, seed=args.seed)
    module = SupervisedModule(net, args.lr, args.weight_decay, epochs * len(loader), args.shift, args.label_smoothing,
                              low_res_epochs)
    clock = Clock()
    make_trainer(epochs, args.max_minutes, stop_after_epochs=args.stop_after_epochs).fit(module, loader)
    train_s, train_cpu_s = clock.seconds()

    net.eval()
    logits = predict(net, test.images)
    pair_logits = predict(net, test_pair.images)
    # pair scenes hold two classes: a prediction is right when it names either object
    pair_hit = (pair_logits.argmax(1, keepdim=True) == test_pair.object_labels).any(1)
    metrics = {"test_acc": class_accuracy(logits, test.labels), "pair_test_either_acc": float(pair_hit.double().mean()),
               "train_seconds": train_s, "train_cpu_seconds": train_cpu_s, "epochs": epochs,
               "low_res_epochs": low_res_epochs, "train_size": args.train_size}
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    ssl_models.save_checkpoint({"arch": args.arch, "config": config, "state_dict": state,
                                "classes": list(SCENE_CLASSES), "metrics": metrics}, out)

    model = load_supervised(out, args.arch)
    with torch.no_grad():
        if not torch.equal(model(to_input(test.images[:8])), net(to_input(test.images[:8]))):
            raise RuntimeError("the reloaded classifier does not reproduce the trained network")
    write_report(f"supervised_{args.arch}", {**metrics, "params": sum(p.numel() for p in net.parameters()),
                                             "checkpoint_mb": file_mb(out)})
    agf_check(model, test.images[:2])  # after the report: a failure here must not lose the numbers


if __name__ == "__main__":
    main()
