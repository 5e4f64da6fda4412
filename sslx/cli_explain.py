"""`python -m sslx.explain IMAGE ...`: explain a model's prediction on image files and save an overlay PNG."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

PROG = "python -m sslx.explain"
DEFAULT_MODEL = "vgg"
DEFAULT_OUT = "explanation.png"
SCENES_INPUT_SIZE = 128  # the embedded supervised classifiers were trained on 128×128 scenes
TORCHVISION_INPUT_SIZE = 224
ROTATION_NAMES = ("0°", "90°", "180°", "270°")
# MoCo files share the {'arch', 'state_dict'} wrapper of torchvision classifiers; their keys tell them apart.
MOCO_PREFIXES = ("encoder_q.", "base_encoder.")


class UsageError(Exception):
    """A problem with what the user asked for (image, model, target, output), reported without a traceback."""


@dataclass(frozen=True)
class ExplainableModel:
    """An eval-mode network with the normalisation and square input size it expects, and its class names."""

    network: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    class_names: tuple[str, ...] | None  # None: unnamed outputs (SSL clusters)
    description: str

    def class_name(self, index: int) -> str:
        """Readable name of output `index`."""
        if self.class_names is not None and index < len(self.class_names):
            return self.class_names[index]
        return f"cluster {index}"


# ---------------------------------------------------------------------------------------- models
def load_model(spec: str, kind: str | None = None) -> ExplainableModel:
    """The model named by `spec`: an embedded name ("vgg", "resnet", "rotnet", "sela", "scan") or a checkpoint path
    (`kind`: its ssl_models family, for files whose keys do not tell it)."""
    from sslx.assets import EMBEDDED, SUPERVISED, asset_path, training_command
    from ssl_models import CheckpointError

    if spec in EMBEDDED:
        path = asset_path(spec)
        if not path.is_file():
            raise UsageError(f"embedded model {spec!r} is not available: {path} is missing "
                             f"(create it with `{training_command(spec)}`)")
    else:
        path = Path(spec)
        if not path.exists():
            raise UsageError(f"unknown model {spec!r}: neither an embedded model ({', '.join(EMBEDDED)}) "
                             "nor an existing checkpoint file")
        if not path.is_file():
            raise UsageError(f"model checkpoint {spec!r} is not a file")
    try:
        if spec in SUPERVISED:
            return _sslx_supervised(path)
        if spec in EMBEDDED:  # trained on the 128×128 scenes, whatever input size the loader assumes for the family
            return _ssl_model(path, kind=spec, input_size=SCENES_INPUT_SIZE)
        if kind is not None:
            return _ssl_model(path, kind=kind)
        return _from_checkpoint(path)
    except (CheckpointError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise UsageError(f"cannot load model {spec!r}: {exc}") from None


def _peek(path: Path) -> object:
    """The checkpoint's top-level object (memory-mapped, weights only), or None for files only ssl_models reads."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # legacy (non-zip) or foreign files: ssl_models.load explains what is wrong with them
        return None


def _from_checkpoint(path: Path) -> ExplainableModel:
    from sslx.assets import SUPERVISED_KEYS

    obj = _peek(path)
    if isinstance(obj, dict) and set(obj) == SUPERVISED_KEYS:
        return _sslx_supervised(path)
    if isinstance(obj, dict) and isinstance(obj.get("arch"), str) and isinstance(obj.get("state_dict"), dict) \
            and not any(str(key).split(".module.")[-1].removeprefix("module.").startswith(MOCO_PREFIXES)
                        for key in obj["state_dict"]):
        return _torchvision(obj["arch"], obj["state_dict"], path)
    return _ssl_model(path, kind=None)


def _sslx_supervised(path: Path) -> ExplainableModel:
    from sslx.assets import load_supervised, read_supervised
    from sslx.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    classes = tuple(str(c) for c in read_supervised(path)["classes"])
    network = load_supervised(path)
    return ExplainableModel(network, IMAGENET_MEAN, IMAGENET_STD, SCENES_INPUT_SIZE, classes,
                            f"supervised {type(network).__name__} from {path}")


def _ssl_model(path: Path, kind: str | None, input_size: int | None = None) -> ExplainableModel:
    import ssl_models

    network = ssl_models.load(path, kind=kind)
    pre = network.preprocess
    names = ROTATION_NAMES if network.info.get("kind") == "rotnet" and network.info.get("K") == 4 else None
    return ExplainableModel(network, tuple(pre.mean), tuple(pre.std), input_size or pre.input_size, names,
                            f"{network.info.get('kind')} ({network.info.get('variant')}) from {path}")


def with_cluster_head(model: ExplainableModel, cluster_head: str | None) -> ExplainableModel:
    """A head-less SSL model completed by a saved ClusterHead (k-means clusters become its classes)."""
    from dataclasses import replace

    from sslx.cluster_head import ClusterHead, HeadedModel

    headless = getattr(model.network, "head", 0) is None
    if cluster_head is None:
        if headless:
            raise UsageError(f"{model.description} has no SSL classifier (a head-less model): pass --cluster-head FILE, "
                             "a k-means head saved by sslx.cluster_head.ClusterHead.fit(index, k).save(FILE)")
        return model
    if not headless:
        raise UsageError(f"--cluster-head is for head-less models; {model.description} has its own SSL head")
    try:
        head = ClusterHead.load(cluster_head)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(f"--cluster-head: {exc}") from None
    dim = model.network.info.get("feature_dim")
    if head.in_features != dim:
        raise UsageError(f"--cluster-head holds {head.in_features}-d centroids, the model's features are {dim}-d")
    network = HeadedModel(model.network.backbone, head.to(next(model.network.parameters()).dtype)).eval()
    return replace(model, network=network, description=f"{model.description} + k-means head (K={head.out_features})")


def _torchvision(arch: str, state: dict, path: Path) -> ExplainableModel:
    """A torchvision classifier saved as {'arch': name, 'state_dict': ...} (as the PyTorch ImageNet example does)."""
    import torchvision
    from sslx.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"{path}: arch {arch!r} is not a torchvision classification model")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    matrices = [value for key, value in state.items() if key.endswith("weight") and value.dim() == 2]
    if not matrices:
        raise ValueError(f"{path}: the state_dict has no linear classifier weight")
    num_classes = int(matrices[-1].shape[0])
    network = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    network.load_state_dict(state, strict=True)
    names = None
    if num_classes == 1000:
        names = tuple(torchvision.models.get_model_weights(arch).DEFAULT.meta["categories"])
    return ExplainableModel(network.eval(), IMAGENET_MEAN, IMAGENET_STD, TORCHVISION_INPUT_SIZE,
                            names or tuple(f"class {i}" for i in range(num_classes)), f"torchvision {arch} from {path}")


# ---------------------------------------------------------------------------------------- inputs
def read_images(paths: Sequence[str], model: ExplainableModel) -> Tensor:
    """Decode image files, resize the shorter side to the model's input size, centre-crop and normalise: B×3×S×S."""
    from sslx.data._image_io import EvalTransform, open_rgb

    transform = EvalTransform(model.input_size, model.input_size, model.mean, model.std)
    images = []
    for path in paths:  # file decoding, not a tensor hot path
        if not Path(path).is_file():
            raise UsageError(f"image not found: {path}" if not Path(path).exists() else f"image is not a file: {path}")
        try:
            images.append(transform(open_rgb(path)))
        except ValueError as exc:
            raise UsageError(f"{exc} (expected a PNG or JPEG image)") from None
    return torch.stack(images)


def parse_target(text: str, model: ExplainableModel, num_classes: int) -> int | None:
    """`--target`: "top" (None: each image's prediction), a class id, or a class name."""
    if text == "top":
        return None
    try:
        target = int(text)
    except ValueError:
        names = model.class_names or ()
        if text not in names:
            known = f"; class names are {', '.join(names)}" if names else ""
            raise UsageError(f"--target must be 'top', a class id or a class name, got {text!r}{known}") from None
        target = names.index(text)
    if not 0 <= target < num_classes:
        raise UsageError(f"--target {target} is out of range: the model has {num_classes} classes (0..{num_classes - 1})")
    return target


def parse_methods(text: str) -> list[str]:
    """`--method`: one registered method name or a comma-separated list of them."""
    from sslx.explain_api import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise UsageError(f"unknown method {', '.join(unknown) or repr(text)}; available: {', '.join(sorted(METHODS))}")
    return methods


# ---------------------------------------------------------------------------------------- run
def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m sslx.explain`."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Explain a classifier's decision on image files and save the heatmaps overlaid on them.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files (any size; resized and centre-cropped)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="embedded model vgg|resnet|rotnet|sela|scan, or a checkpoint path: sslx supervised, "
                             "SCAN/SeLa/RotNet (ssl_models.load) or torchvision {'arch', 'state_dict'} (default: vgg)")
    parser.add_argument("--kind", default=None, help="ssl_models family of a checkpoint whose keys do not tell it "
                        "(simclr or byol for converted torchvision ResNets, dino / vicreg for backbone-only files)")
    parser.add_argument("--cluster-head", default=None, help="for head-less SSL models (MoCo, VICReg, ...): a "
                        "ClusterHead file (k-means on reference features) whose clusters are explained")
    parser.add_argument("--method", default="agf", help="explanation method(s), comma-separated (default: agf)")
    parser.add_argument("--target", default="top", help="class to explain: 'top' (the prediction), an id or a class name")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output PNG (default: {DEFAULT_OUT})")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity over the image, in (0, 1] (default 0.5)")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default: cpu)")
    return parser


def _check_out(out: str) -> Path:
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise UsageError(f"--out must be a .png file, got {out!r}")
    if not path.parent.is_dir():
        raise UsageError(f"--out folder {str(path.parent)!r} does not exist")
    return path


@dataclass(frozen=True)
class Explanations:
    """What the command computed: the model inputs, class probabilities, predicted and explained classes, and
    heatmaps B×1×H×W per method."""

    inputs: Tensor
    probabilities: Tensor
    predicted: Tensor
    explained: Tensor
    heatmaps: dict[str, Tensor]


def explain_files(model: ExplainableModel, paths: Sequence[str], methods: Sequence[str], target: str = "top",
                  device: torch.device | str = "cpu") -> Explanations:
    """Read the images, classify them and explain `target` ("top", a class id or name) with every method."""
    from sslx.explain_api import explain

    x = read_images(paths, model).to(device)
    network = model.network.to(device)
    with torch.no_grad():
        probabilities = network(x).softmax(dim=1)
    goal = parse_target(target, model, probabilities.shape[1])
    predicted = probabilities.argmax(dim=1)
    explained = predicted if goal is None else torch.full_like(predicted, goal)
    heatmaps = {}
    for method in methods:
        try:
            heatmaps[method] = explain(network, x, explained, method=method)
        except (ValueError, TypeError, NotImplementedError) as exc:  # e.g. a layer type the method has no rule for
            raise UsageError(f"method {method!r} cannot explain {model.description}: {exc}") from None
    return Explanations(x, probabilities, predicted, explained, heatmaps)


def report_lines(model: ExplainableModel, paths: Sequence[str], result: Explanations) -> list[str]:
    """One line per image: the predicted class with its probability (and the explained class when different)."""
    lines = []
    for path, pred, goal, probs in zip(paths, result.predicted.tolist(), result.explained.tolist(),
                                       result.probabilities):
        line = f"{path}: predicted {model.class_name(pred)} (class {pred}, p={float(probs[pred]):.3f})"
        if goal != pred:
            line += f"; explained {model.class_name(goal)} (class {goal}, p={float(probs[goal]):.3f})"
        lines.append(line)
    return lines


def save_overlays(model: ExplainableModel, paths: Sequence[str], result: Explanations, out: Path,
                  alpha: float) -> Path:
    """Write one row per image (the image, then each method's heatmap over it) to the PNG `out`."""
    from sslx.viz import explanation_grid, save_figure

    titles = [f"{Path(p).name}\n{model.class_name(c)}" for p, c in zip(paths, result.explained.tolist())]
    figure = explanation_grid(result.inputs.cpu(), {m: h.detach().cpu() for m, h in result.heatmaps.items()},
                              titles=titles, mean=model.mean, std=model.std, overlay_alpha=alpha)
    return save_figure(figure, out)


def run(args: argparse.Namespace) -> list[str]:
    """Explain every image, write the figure to args.out; returns the lines to print."""
    if not 0.0 < args.alpha <= 1.0:
        raise UsageError(f"--alpha must be in (0, 1], got {args.alpha}")
    out = _check_out(args.out)
    methods = parse_methods(args.method)
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UsageError(f"--device: {exc}") from None
    model = with_cluster_head(load_model(args.model, args.kind), args.cluster_head)
    result = explain_files(model, args.images, methods, args.target, device)
    save_overlays(model, args.images, result, out, args.alpha)
    return [*report_lines(model, args.images, result), f"wrote {out}"]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        lines = run(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    from sslx.allocator import keep_freed_memory
    keep_freed_memory()
    sys.exit(main())
