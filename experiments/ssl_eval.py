"""Shared code of the self-supervised experiments (Table 4, Fig. 4a, Fig. 4b): models, reference index, scorers.

Algorithm-2 setting of every script: the reference set S is the first `n_reference` single-object *train*
scenes, embedded at the penultimate layer (the SSL head's input) and indexed with FAISS "Flat", metric l2,
k = 1. Queries are *test* scenes, so a query is never a member of S and cannot be its own neighbour.
Scorers are nn.Modules, so Trainer.predict (experiments/harness.py) moves them to each rank's device.
Segmentation counts, thresholds and perturbation summaries are supervised_eval's (shared with Tables 2, 3).

Real data (issue #8): `--ssl-model NAME=PATH` replaces the embedded models by SCAN/SeLa/RotNet checkpoints
(`ssl_models.load`), the scripts' `--imagenet-val`/`--imagenet-seg` replace the test scenes by real images
(sslx.data readers, resized/cropped to the model's input size with its normalisation), and `--reference DIR`
(or, by default, the dataset's images after the queries) replaces the train scenes as S.
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (puts the checkout on sys.path)
import supervised_eval as se  # noqa: E402
from sslx import ssl  # noqa: E402
from sslx.data import ScenesDataset  # noqa: E402
from sslx.data.scenes import collate_scenes  # noqa: E402
from sslx.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize  # noqa: E402
from sslx.metrics import perturbation_correct  # noqa: E402
from sslx.models import SmallResNet, SmallVGG  # noqa: E402
from sslx.neighbors import FeatureIndex, model_fingerprint  # noqa: E402

SSL_NAMES = ("sela", "scan", "rotnet", "dino_vit")
SUPERVISED_NAMES = ("vgg", "resnet")
DISPLAY = {"vgg": "Supervised (VGG)", "resnet": "Supervised (ResNet)", "sela": "SeLa", "scan": "SCAN",
           "rotnet": "RotNet", "dino_vit": "DINO-ViT"}
MODES = ("delta", "sum", "none")
MODE_LABELS = {"delta": "Δ", "sum": "Σ", "none": "w/o"}
METRIC, FACTORY, K = "l2", "Flat", 1
DEFAULT_REFERENCE = 1000


# ---- models ------------------------------------------------------------------------------------
class ClassifierAsSSL(nn.Module):
    """A supervised classifier split like an SSL model: `backbone` (images → penultimate) ▸ `head` (last Linear)."""

    def __init__(self, backbone: nn.Sequential, head: nn.Linear, cam_layer: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.cam_layer = cam_layer

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features B×D (the head's input)."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits B×classes, identical to the wrapped classifier's."""
        return self.head(self.backbone(x))


def split_classifier(model: nn.Module) -> ClassifierAsSSL:
    """The embedded VGG/ResNet classifier as backbone ▸ head, sharing its modules (weights are not copied)."""
    if isinstance(model, SmallVGG):
        *hidden, last = list(model.classifier.children())
        backbone = nn.Sequential(OrderedDict(features=model.features, avgpool=model.avgpool, flatten=nn.Flatten(1),
                                             classifier=nn.Sequential(*hidden)))
        return ClassifierAsSSL(backbone, last, "backbone.features").eval()
    if isinstance(model, SmallResNet):
        stem = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
        parts = OrderedDict((n, getattr(model, n)) for n in stem)
        parts["flatten"] = nn.Flatten(1)
        return ClassifierAsSSL(nn.Sequential(parts), model.fc, "backbone.layer4").eval()
    raise TypeError(f"cannot split {type(model).__name__} into backbone and head; expected the embedded "
                    "SmallVGG or SmallResNet")


def load_model(name: str) -> nn.Module:
    """Embedded model `name` with `backbone` and `head` (SSL as loaded; supervised split at the last Linear)."""
    from sslx.assets import load_embedded

    if name not in SSL_NAMES + SUPERVISED_NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {SSL_NAMES + SUPERVISED_NAMES}")
    model = load_embedded(name)
    return split_classifier(model) if name in SUPERVISED_NAMES else model.eval()


def method_options(model: nn.Module, method: str) -> dict[str, Any]:
    """Grad-CAM reads the backbone's last convolutional stage; the speed options are supervised_eval's."""
    if method == "gradcam":
        layer = model.cam_layer if isinstance(model, ClassifierAsSSL) else f"backbone.{model.layers[-1]}"
        return {"layer": layer}
    return dict(se.SPEED_OPTIONS.get(method, {}))


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the model's input normalisation (ImageNet's for the supervised models)."""
    pre = getattr(model, "preprocess", None)
    return (tuple(pre.mean), tuple(pre.std)) if pre is not None else (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))


# ---- data and index ----------------------------------------------------------------------------
def scenes(model: nn.Module, split: str, size: int, objects: str = "single", seed: int = 0) -> ScenesDataset:
    """The first `size` scenes of `split`, normalised for `model`, at the resolution it expects."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"need a positive number of {split} scenes, got {size!r}")
    mean, std = normalisation(model)
    pre = getattr(model, "preprocess", None)
    return ScenesDataset(split, size, seed, pre.input_size if pre is not None else 128, objects, mean=mean, std=std)


def loader(dataset: ScenesDataset, batch_size: int) -> DataLoader:
    """In-order batches of scene dicts."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_scenes, num_workers=0)


class FeatureScorer(nn.Module):
    """Trainer.predict rows: dataset ids and penultimate features of a batch."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"ids": batch["index"], "features": self.model.backbone(batch["image"])}


def reference_index(model: nn.Module, n_reference: int, args: argparse.Namespace,
                    dataset: Dataset | None = None) -> FeatureIndex:
    """FAISS Flat l2 index over the penultimate features of the first `n_reference` items of `dataset`.

    `dataset` None: the single-object train scenes. Ids are the items' own `index` entries.
    """
    if dataset is None:
        data = loader(scenes(model, "train", n_reference, seed=args.seed), args.batch_size * 4)
    else:
        data = se.make_loader(dataset, n_reference, args.batch_size * 4)
    rows = harness.run_predict(FeatureScorer(model), data, args)
    return FeatureIndex.from_features(rows["features"], rows["ids"], METRIC, FACTORY, layer="penultimate",
                                      fingerprint=model_fingerprint(model))


# ---- real data ---------------------------------------------------------------------------------
def add_real_data_options(parser: argparse.ArgumentParser) -> None:
    """Add --ssl-model NAME=PATH (repeatable), --reference DIR and --image-size (the real-data options)."""
    g = parser.add_argument_group("real data (issue #8)")
    g.add_argument("--ssl-model", action="append", default=[], metavar="NAME=PATH",
                   help="a SCAN, SeLa or RotNet checkpoint (kind detected by ssl_models.load), evaluated as row NAME "
                   "instead of the embedded models; repeat for several rows. Cannot be combined with --models")
    g.add_argument("--reference", type=Path, default=None, metavar="DIR",
                   help="reference set S for Algorithm 2: images in DIR/<class>/<image> (ImageFolder layout, e.g. an "
                   "ImageNet train folder), the first --n-reference of them in sorted order. Default with real query "
                   "data: the --n-reference images of the same dataset right after the --n-images queries (so no "
                   "query is in S); default otherwise: the train scenes")
    g.add_argument("--image-size", type=int, default=None,
                   help="side of the real images after resize (shorter side to size·256/224, ImageFolder data) and "
                   "centre crop, or resize (ImageNet-Segmentation); normalised with the model's mean/std (ImageNet's). "
                   "Default: the model's own input size (224 for ImageNet checkpoints, 128 for the embedded models)")


def ssl_model_specs(specs: Sequence[str]) -> dict[str, Path]:
    """NAME=PATH strings → {NAME: PATH}, checking the form, unique names and that each file exists."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise ValueError(f"--ssl-model must be NAME=PATH, got {spec!r}")
        if name in out:
            raise ValueError(f"--ssl-model name {name!r} is given twice")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--ssl-model {name}: checkpoint file not found: {path}")
        out[name] = Path(path)
    return out


def model_loaders(models: str | None, ssl_models_given: Sequence[str], default: Sequence[str]
                  ) -> dict[str, Callable[[], nn.Module]]:
    """Row name → loader: the --ssl-model checkpoints if any, else the embedded --models (or `default`)."""
    specs = ssl_model_specs(ssl_models_given)
    if specs and models is not None:
        raise ValueError("give either --models (embedded models) or --ssl-model (checkpoints), not both")
    if specs:
        import ssl_models

        return {name: functools.partial(ssl_models.load, path) for name, path in specs.items()}
    names = name_list(models if models is not None else ",".join(default), SSL_NAMES + SUPERVISED_NAMES, "--models")
    return {name: functools.partial(load_model, name) for name in names}


def display(name: str) -> str:
    """Row label of a model: the embedded models' display names, else the --ssl-model NAME itself."""
    return DISPLAY.get(name, name)


def real_input_size(model: nn.Module, image_size: int | None) -> int:
    """--image-size, or the model's own input size (preprocess.input_size; 128 for the split classifiers)."""
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"--image-size must be a positive integer, got {image_size!r}")
        return image_size
    pre = getattr(model, "preprocess", None)
    return int(pre.input_size) if pre is not None else 128


def image_folder(root: Path, model: nn.Module, image_size: int | None, labels: Path | None = None,
                 what: str = "--reference") -> Dataset:
    """ImageNet-style images (sslx.data.imagenet.ImageNetVal) at the model's size and normalisation."""
    from sslx.data.imagenet import ImageNetVal
    from sslx.data._image_io import EvalTransform

    if not Path(root).is_dir():
        raise FileNotFoundError(f"{what}: image folder not found: {root}")
    size = real_input_size(model, image_size)
    mean, std = normalisation(model)
    return ImageNetVal(root, labels, EvalTransform(round(size * 256 / 224), size, mean, std))


def imagenet_segmentation(path: Path, model: nn.Module, image_size: int | None) -> Dataset:
    """ImageNet-Segmentation (gtsegs_ijcv.mat) images and masks at the model's size and normalisation."""
    from sslx.data.imagenet_seg import ImageNetSegmentation

    if not Path(path).is_file():
        raise FileNotFoundError(f"--imagenet-seg: file not found: {path}")
    data = ImageNetSegmentation(path, real_input_size(model, image_size))
    data.mean, data.std = normalisation(model)  # per instance: the reader normalises with self.mean/self.std
    return data


def after_queries(dataset: Dataset, n_images: int, n_reference: int, flag: str) -> Dataset:
    """The default S on real data: up to `n_reference` items of `dataset` right after its first `n_images`."""
    total = len(dataset)  # type: ignore[arg-type]
    if total <= n_images:
        raise ValueError(f"{flag} holds {total} images, all used as queries (--n-images {n_images}); give --reference "
                         "DIR or fewer --n-images so that some are left for the reference set")
    return Subset(dataset, range(n_images, min(total, n_images + n_reference)))


def index_and_queries(queries: Dataset | None, model: nn.Module, args: Any, flag: str) -> tuple[FeatureIndex, DataLoader]:
    """FAISS index over S and the query batches: real queries with S from --reference (else the images after
    the queries), or, for `queries=None`, the test scenes with the train scenes as S."""
    reference = None
    if args.reference is not None:
        reference = image_folder(args.reference, model, args.image_size)
    elif queries is not None:
        reference = after_queries(queries, args.n_images, args.n_reference, flag)
    index = reference_index(model, args.n_reference, args, reference)
    if queries is None:
        return index, loader(scenes(model, "test", args.n_images, seed=args.seed), args.batch_size)
    return index, se.make_loader(queries, args.n_images, args.batch_size)


def describe_data(args: Any, source: Path | None, noun: str, n_images: int | None = None) -> tuple[str, str]:
    """(queries, reference S) in words for the results file; `source` = the real query data, if any."""
    n = args.n_images if n_images is None else n_images
    queries = f"the first {n} {noun} of {source}" if source is not None else f"{n} single-object test scenes"
    if args.reference is not None:
        reference = f"the first {args.n_reference} images of {args.reference}"
    elif source is not None:
        reference = f"up to {args.n_reference} {noun} of {source} after the queries"
    else:
        reference = f"the first {args.n_reference} single-object train scenes"
    return queries, reference


def warn_if_embedded_on_real_data(model_names: Sequence[str], ssl_models_given: Sequence[str], real: bool) -> None:
    """Warn when the embedded models (trained on 128-px procedural scenes) are run on real images."""
    if real and not ssl_models_given:
        warnings.warn(f"the embedded models {list(model_names)} were trained on 128-px procedural scenes; their "
                      "explanations of real images are a smoke test, not a reproduction (pass --ssl-model)",
                      stacklevel=2)


def real_conventions(queries: str, reference: str, explain_model: str = "unmodified") -> str:
    """Markdown bullet points describing the Algorithm-2 setting on real data."""
    return (f"- **Algorithm 2**: queries = {queries}; reference set S = {reference}; features = the penultimate "
            f"layer (the SSL head's input); FAISS `{FACTORY}` index, metric {METRIC} (squared Euclidean), k = {K}. "
            "S never contains a query (separate folder, or the dataset's images after the queries); neighbour ids "
            "are indices into S's dataset.\n"
            + explained_bullet(explain_model))


def explained_bullet(explain_model: str = "unmodified") -> str:
    """The Δ/Σ/w-o bullet of every SSL results file (Algorithm 2 lines 4-7 as sslx.ssl.explain implements them)."""
    chosen = ("- **Δ / Σ / w/o** choose the SSL class t = arg-max head(L_I − L_N), arg-max head(L_I + L_N), arg-max "
              "head(L_I), with L_I the image's and L_N the neighbour's features; ")
    if explain_model == "unmodified":
        return chosen + ("the map explains t on the **unmodified SSL network** M = head ∘ backbone applied to the image "
                         "(Algorithm 2, line 7: \"Apply Alg. 1, with the input tuple M, I, t\"; `sslx.ssl.explain`, "
                         "`--explain-model unmodified`).\n")
    return chosen + ("the map explains t on the **combined model** head(backbone(·) ∓ L_N) with the clean image's L_N "
                     "held fixed (`--explain-model combined`; not the paper's Algorithm 2, which explains M itself).\n")


# ---- explanations ------------------------------------------------------------------------------
def explain(model: nn.Module, x: Tensor, index: FeatureIndex, mode: str, method: str,
            explain_model: str = "unmodified") -> ssl.SSLExplanation:
    """Algorithm 2 on a batch: t from the Δ/Σ/w-o combined features, `method`'s map of t on M (or the combined model)."""
    with torch.enable_grad():  # Trainer.predict runs under no_grad
        out = ssl.explain(model, x, index, mode=mode, method=method, k=K, explain_model=explain_model,
                          **method_options(model, method))
    return ssl.SSLExplanation(out.heatmaps.detach().to(x.dtype), out.ssl_class, out.neighbor_ids, out.logits.detach())


def combined_classifier(model: nn.Module, index: FeatureIndex, neighbor_ids: Tensor, mode: str, like: Tensor,
                        repeats: int = 1) -> ssl.CombinedFeaturesModel:
    """head(backbone(·) ± L_N) with each image's *fixed* neighbour features, in eval mode.

    Offset row i belongs to image i % B (the rows are tiled `repeats` times), the order in which
    `perturbation_correct` stacks the perturbed copies of a batch.
    """
    neighbor = index.features_of(neighbor_ids.cpu()).to(dtype=like.dtype, device=like.device).mean(dim=1)
    return ssl.CombinedFeaturesModel(model.backbone, model.head, ssl.mode_offset(neighbor, mode).repeat(repeats, 1)).eval()


SCORINGS = ("unmodified", "fixed_neighbour")


def ssl_perturbation(model: nn.Module, index: FeatureIndex, x: Tensor, explanation: ssl.SSLExplanation, mode: str,
                     fractions: Sequence[float], scoring: str = "unmodified") -> Tensor:
    """Bool B×F: after removing the least relevant pixels, is the explained class t still chosen?

    scoring "unmodified" (the paper's): does M = head ∘ backbone still predict t on the perturbed image?
    "fixed_neighbour" (a variant): does head(L_I' ∓ L_N) with the clean image's neighbour L_N still pick t?
    """
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    mean, std = normalisation(model)
    pixels = denormalize(x, mean, std).clamp(0.0, 1.0)
    classifier = model if scoring == "unmodified" else combined_classifier(model, index, explanation.neighbor_ids,
                                                                           mode, x, repeats=len(fractions))
    # One forward pass of all B·F perturbed copies (item i = image i % B): the fixed offsets line up with
    # the items, and one large batch is several times faster on a busy CPU than F small ones.
    return perturbation_correct(classifier, pixels, explanation.heatmaps, explanation.ssl_class, "negative",
                                fractions, functools.partial(normalize, mean=mean, std=std),
                                batch_size=x.shape[0] * len(fractions))


# ---- options and bookkeeping -------------------------------------------------------------------
def name_list(text: str, valid: Sequence[str], what: str) -> tuple[str, ...]:
    """Comma-separated names → tuple, checked against `valid` (no repeats, at least one)."""
    given = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [g for g in given if g not in valid]
    if not given or bad or len(set(given)) != len(given):
        raise ValueError(f"invalid {what} {text!r} (unknown: {bad}); give a comma-separated subset of {tuple(valid)} "
                         "without repeats")
    return given


def fraction_list(text: str) -> tuple[float, ...]:
    """Comma-separated removal fractions → tuple of floats (checked by sslx.metrics)."""
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--fractions must be comma-separated numbers, got {text!r}") from None


def experiment_parser(description: str | None) -> argparse.ArgumentParser:
    """The harness's common options (batch size 32 by default) plus --n-reference (size of S) and --explain-model."""
    parser = harness.experiment_parser(description)
    parser.set_defaults(batch_size=32)  # larger batches run several times faster per image on a busy CPU
    parser.add_argument("--n-reference", type=int, default=DEFAULT_REFERENCE,
                        help=f"size of the reference set S: the first N single-object train scenes, or N real images (see "
                        f"--reference) (default {DEFAULT_REFERENCE})")
    parser.add_argument("--explain-model", choices=ssl.EXPLAIN_MODELS, default="unmodified",
                        help="network the maps explain t on: 'unmodified' (default, the paper's Algorithm 2 line 7: "
                        "the SSL network M itself) or 'combined' (head(backbone(·) ∓ L_N) with the neighbour fixed)")
    return parser


def check_reference(n_reference: int) -> int:
    """Raise unless the reference set size is a positive integer."""
    if isinstance(n_reference, bool) or not isinstance(n_reference, int) or n_reference < 1:
        raise ValueError(f"--n-reference must be a positive integer, got {n_reference!r}")
    return n_reference


def reference_conventions(n_reference: int, explain_model: str = "unmodified") -> str:
    """Markdown bullet points describing the Algorithm-2 setting."""
    return (f"- **Algorithm 2**: reference set S = the first {n_reference} single-object *train* scenes; features = "
            f"the penultimate layer (the SSL head's input); FAISS `{FACTORY}` index, metric {METRIC} (squared "
            f"Euclidean), k = {K}. The queries are *test* scenes, which are never in S, so a query cannot be its own "
            "neighbour (the exclusion of the query from its neighbours never has to act).\n"
            + explained_bullet(explain_model))


class Stopwatch:
    """Wall and CPU seconds since creation (CPU = this process, all threads)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> dict[str, float]:
        """{'wall_s', 'cpu_s'} so far, rounded to 0.1 s."""
        return {"wall_s": round(time.perf_counter() - self.wall, 1), "cpu_s": round(time.process_time() - self.cpu, 1)}


def for_each_model(models: Mapping[str, Callable[[], nn.Module]],
                   evaluate: Callable[[str, nn.Module], dict[str, Any]]) -> dict[str, Any]:
    """{name: evaluate(name, model) + its wall/CPU time} for each (name → model loader), in order."""
    results: dict[str, Any] = {}
    for name, load in models.items():
        clock = Stopwatch()
        print(f"[{name}] evaluating", flush=True)
        model = load()
        results[name] = {**evaluate(name, model), "fingerprint": model_fingerprint(model), "time": clock.read()}
        print(f"[{name}] done: {results[name]['time']}", flush=True)
    return results
