"""One probe job: for each requested layer train a LinearProbe, explain it on held-out images, score, save."""
from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from sslx.data.scenes import collate_scenes
from sslx.probe import outputs, tracking
from sslx.probe.data import SCENES, ProbeDataModule, ProbeDatasets, probe_datasets
from sslx.probe.evaluate import (CONVENTIONS, ExplanationEvaluation, available_methods, check_metrics, explain_images,
                                 nest_results)
from sslx.probe.module import TARGET_FEATURES, LinearProbe
from sslx.metrics import DEFAULT_FRACTIONS

ALL = "all"
EXPLAINED_MODULE = "trunk"  # the probed layer inside the explainable network (Grad-CAM's layer)
# Fields that change the numbers; a --resume must match them. (devices/strategy change only float noise.)
RESULT_FIELDS = ("model", "data", "masks", "epochs", "batch_size", "max_images", "val_images", "eval_images",
                 "methods", "seed", "optimizer", "lr", "weight_decay", "probe_features", "metrics", "vit_token")


PROBE_CONVENTION = ("frozen post-ReLU output of the layer → AdaptiveMaxPool2d(p) → BatchNorm2d(affine=False) holding "
                    "the exact training-set statistics → Linear; p = min(side, round(sqrt(probe_features / C))), "
                    "stored per layer in layers.<name>.probe.pool; only the Linear is trained (cross-entropy, "
                    "cosine learning-rate decay); accuracies in %")


@dataclass(frozen=True)
class ProbeConfig:
    """Everything a probe job needs (the CLI's options)."""

    layer: str | None = None
    model: str = "rotnet"
    kind: str | None = None
    data: str = SCENES
    masks: str | None = None
    epochs: int = 5
    batch_size: int = 64
    max_images: int = 4000
    val_images: int = 256
    eval_images: int = 256
    eval_batch_size: int = 32
    methods: tuple[str, ...] = ("agf",)
    metrics: tuple[str, ...] = ()
    out: str = "runs/probe"
    wandb: str = "offline"
    wandb_project: str = "sslx-probe"
    accelerator: str = "auto"
    devices: str = "1"
    strategy: str = "auto"
    seed: int = 0
    resume: bool = False
    optimizer: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 5e-4
    probe_features: int = TARGET_FEATURES
    overlays: int = 8
    workers: int = 0
    vit_token: str = "cls"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready copy of every field."""
        values = dataclasses.asdict(self)
        values["methods"] = list(self.methods)
        values["metrics"] = list(self.metrics)
        return values

    def result_fields(self) -> dict[str, Any]:
        """The fields that determine the results (compared on --resume)."""
        values = self.as_dict()
        return {key: values[key] for key in RESULT_FIELDS}


def check_config(config: ProbeConfig) -> None:
    """Raise ValueError for option values that cannot work, before anything is loaded."""
    for name in ("epochs", "batch_size", "max_images", "val_images", "eval_images", "eval_batch_size",
                 "probe_features"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    if config.vit_token not in ("cls", "mean"):
        raise ValueError(f"--vit-token must be 'cls' or 'mean', got {config.vit_token!r}")
    if config.overlays < 0 or config.workers < 0:
        raise ValueError("--overlays and --workers must be >= 0")
    if not config.methods:
        raise ValueError("--methods is empty; give e.g. --methods agf,gradcam")
    unknown = [m for m in config.methods if m not in available_methods()]
    if unknown:
        raise ValueError(f"unknown explanation method(s) {unknown}; available: {', '.join(available_methods())}")
    check_metrics(config.metrics, with_masks=True)  # masks are checked against the data in evaluate()
    if len(set(config.methods)) != len(config.methods):
        raise ValueError(f"--methods lists a method twice: {list(config.methods)}")
    if config.wandb not in tracking.WANDB_MODES:
        raise ValueError(f"--wandb must be one of {tracking.WANDB_MODES}, got {config.wandb!r}")
    if config.wandb == "online" and not tracking.has_online_credentials():
        raise ValueError(tracking.NO_CREDENTIALS)


def load_model(spec: str, kind: str | None = None, *, vit_token: str = "cls") -> nn.Module:
    """An embedded model name (rotnet, sela, scan, moco, dino_vit, vit) or a checkpoint path, loaded with ssl_models
    (`kind`: its family, detected when None).

    ViTs (the embedded supervised "vit", DINO ViT checkpoints) are probed per block: layer N = after block N,
    read at the CLS token or the mean patch token (`vit_token`).
    """
    import ssl_models
    from ssl_models.embedded_assets import EMBEDDED_NAMES
    from sslx.models.vit_layers import ViTLayers

    if spec == "vit":
        from ssl_models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
        from sslx.assets import load_embedded

        vit = load_embedded("vit")
        return ViTLayers(vit, Preprocess(IMAGENET_MEAN, IMAGENET_STD, vit.img_size), vit_token,
                         {"kind": "supervised", "variant": "tiny vit"})
    if spec == "dino_vit":
        if kind not in (None, spec):
            raise ValueError(f"--kind {kind!r} contradicts the embedded model {spec!r}")
        model = ssl_models.embedded(spec)
        return ViTLayers(model.backbone.vit, model.preprocess, vit_token, model.info)
    if spec in EMBEDDED_NAMES:
        if kind is not None and kind != spec:
            raise ValueError(f"--kind {kind!r} contradicts the embedded model {spec!r}")
        return ssl_models.embedded(spec)
    if kind is not None and kind not in ssl_models.KINDS:
        raise ValueError(f"unknown --kind {kind!r}; valid: {', '.join(ssl_models.KINDS)}")
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--model {spec!r} is neither an embedded model ({', '.join(EMBEDDED_NAMES)}, vit) "
                                "nor an existing checkpoint file")
    try:
        model = ssl_models.load(path, kind=kind)
    except ssl_models.CheckpointError as err:
        raise ValueError(f"cannot load --model {spec!r}: {err}") from None
    if model.info.get("kind") == "dino_vit":
        return ViTLayers(model.backbone.vit, model.preprocess, vit_token, model.info)
    return model


def resolve_layers(model: nn.Module, layer: str | None) -> list[str]:
    """Layer names for --layer: a 1-based index, a layer name, or "all"."""
    names = list(model.layers)
    valid = ", ".join(f"{i}={name}" for i, name in enumerate(names, start=1))
    if layer is None:
        raise ValueError(f"choose a layer with --layer: {valid}, or 'all'")
    if layer == ALL:
        return names
    if layer in names:
        return [layer]
    if layer.isdigit() and 1 <= int(layer) <= len(names):
        return [names[int(layer) - 1]]
    raise ValueError(f"layer {layer!r} does not exist in this model; valid layers: {valid}, or 'all'")


def _not_a_tip(record: logging.LogRecord) -> bool:
    return "Tip:" not in record.getMessage()


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning warnings that are expected here (frozen eval-mode trunk, CPU-only, few workers) and its
    advertising tips."""
    lightning_log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    lightning_log.addFilter(_not_a_tip)
    try:
        with warnings.catch_warnings():
            for message in (".*module\\(s\\) in eval mode.*", ".*does not have many workers.*",
                            ".*GPU available but not used.*", ".*LeafSpec.*is deprecated.*",
                            ".*sync_dist=True.*"):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        lightning_log.removeFilter(_not_a_tip)


def make_trainer(config: ProbeConfig, out: Path, **kwargs: Any) -> pl.Trainer:
    """A Trainer on the configured hardware; sharding is ProbeDataModule's (use_distributed_sampler=False)."""
    devices: int | str = int(config.devices) if str(config.devices).isdigit() else config.devices
    with quiet_lightning():
        return pl.Trainer(accelerator=config.accelerator, devices=devices, strategy=config.strategy,
                          use_distributed_sampler=False, num_sanity_val_steps=0, enable_model_summary=False,
                          default_root_dir=str(out), **kwargs)


def _existing_results(config: ProbeConfig, path: Path) -> dict[str, Any] | None:
    stored = outputs.read_results(path)
    if stored is None or not config.resume:
        return None
    theirs, ours = stored.get("config", {}), config.result_fields()
    defaults = {"metrics": []}  # runs written before --metrics existed selected none
    differ = sorted(k for k in ours if theirs.get(k, defaults.get(k)) != ours[k])
    if differ:
        detail = ", ".join(f"{k}: {theirs.get(k)!r} → {ours[k]!r}" for k in differ)
        raise ValueError(f"--resume: {path} was written with different settings ({detail}); "
                         "use the same options or another --out")
    return stored


class ProbeJob:
    """The probe pipeline of one ProbeConfig: the constructor checks options, model, layers, data and any
    results to resume (raising ValueError/FileNotFoundError with a clear message); `run()` does the work."""

    def __init__(self, config: ProbeConfig) -> None:
        check_config(config)
        self.config = config
        self.out = Path(config.out)
        self.model = load_model(config.model, config.kind, vit_token=config.vit_token)
        self.layers = resolve_layers(self.model, config.layer)
        self.is_main = rank_zero_only.rank == 0
        self.metrics_path = self.out / "metrics.json"
        self.stored = _existing_results(config, self.metrics_path)
        pre = self.model.preprocess
        self.datasets: ProbeDatasets = probe_datasets(config.data, config.masks, pre.input_size, pre.mean, pre.std,
                                                      config.max_images, config.val_images, config.eval_images,
                                                      config.seed)
        self.wandb_run: Any = None

    # ---- pieces --------------------------------------------------------------------------------
    def _data_module(self) -> ProbeDataModule:
        c = self.config
        return ProbeDataModule(self.datasets, c.batch_size, c.eval_batch_size, c.workers, c.seed)

    def _new_results(self) -> dict[str, Any]:
        return {"version": outputs.RESULTS_VERSION, "config": self.config.as_dict(),
                "conventions": {**CONVENTIONS, "probe": PROBE_CONVENTION,
                                "layers": "--layer N is 1-based into the model's probe-able layers"},
                "data": None, "splits": {}, "layers": {}}

    def _layer_done(self, results: dict[str, Any], layer: str) -> bool:
        return layer in results["layers"] and (self.out / layer / "probe.pt").is_file()

    # ---- one layer -----------------------------------------------------------------------------
    def train_probe(self, layer: str, logger: Any) -> tuple[LinearProbe, dict[str, Any]]:
        """Fit (or resume) the probe of `layer`; returns it with its train/val accuracy."""
        c = self.config
        pl.seed_everything(c.seed, workers=True, verbose=False)
        probe = LinearProbe(self.model, layer, self.datasets.num_classes, input_size=self.model.preprocess.input_size,
                            target_features=c.probe_features, optimizer=c.optimizer, lr=c.lr,
                            weight_decay=c.weight_decay)
        ckpt_dir = self.out / layer / "checkpoints"
        last = ckpt_dir / "last.ckpt"
        checkpoint = ModelCheckpoint(dirpath=str(ckpt_dir), save_top_k=0, save_last=True, enable_version_counter=False)
        steps = max(1, len(self.datasets.train) // c.batch_size)
        trainer = make_trainer(c, self.out, max_epochs=c.epochs, logger=logger if logger is not None else False,
                               callbacks=[checkpoint], log_every_n_steps=min(10, steps))
        data = self._data_module()
        resume_from = str(last) if c.resume and last.is_file() else None
        if resume_from and self.is_main:
            print(f"[sslx.probe] {layer}: resuming training from {last}", flush=True)
        elif self.is_main:
            last.unlink(missing_ok=True)  # a fresh run must never be resumed later from an older run's state
        with quiet_lightning():
            trainer.fit(probe, datamodule=data, ckpt_path=resume_from)
            fitted = {k: float(v) for k, v in trainer.callback_metrics.items()}
            if not fitted:  # the checkpoint had finished training: measure validation accuracy again
                fitted = {k: float(v) for k, v in trainer.validate(probe, datamodule=data, verbose=False)[0].items()}
        stats = {"train_accuracy": fitted.get(f"{layer}/train/accuracy"),
                 "val_accuracy": fitted.get(f"{layer}/val/accuracy"), "epochs": c.epochs}
        # Lightning reports logged values in float32: round the percentages like the evaluation's.
        return probe, {k: (round(100.0 * v, 4) if isinstance(v, float) and k.endswith("accuracy") else v)
                       for k, v in stats.items()}

    def evaluate(self, explainable: nn.Module) -> dict[str, Any]:
        """Explain the held-out images with every method and score the maps (Trainer.test, any strategy)."""
        c, data = self.config, self.datasets
        evaluation = ExplanationEvaluation(explainable, EXPLAINED_MODULE, c.methods, data.mean, data.std,
                                           with_masks=data.has_masks, num_classes=data.num_classes,
                                           metrics=c.metrics)
        trainer = make_trainer(c, self.out, logger=False, inference_mode=False)
        with quiet_lightning():
            logged = trainer.test(evaluation, datamodule=self._data_module(), verbose=False)[0]
        return nest_results(logged, c.methods, DEFAULT_FRACTIONS, data.has_masks, c.metrics)

    def overlay_batch(self) -> dict[str, Any]:
        """The first `--overlays` held-out images (a fixed set) as one batch."""
        count = min(self.config.overlays, len(self.datasets.test))
        return collate_scenes([self.datasets.test[i] for i in range(count)])

    def write_overlays(self, layer: str, explainable: nn.Module) -> Any:
        """overlays.png for `layer` and the matching W&B table (None without W&B)."""
        if self.config.overlays == 0:
            return None
        data, batch = self.datasets, self.overlay_batch()
        x, labels = batch["image"], batch["label"]
        with torch.no_grad():
            predictions = explainable(x).argmax(dim=1)
        maps = explain_images(explainable, EXPLAINED_MODULE, self.config.methods, x, labels)
        names = [data.classes[i] for i in labels.tolist()]
        predicted = [data.classes[i] for i in predictions.tolist()]
        titles = [f"{n} (pred {p})" for n, p in zip(names, predicted)]
        masks = batch.get("mask") if data.has_masks else None
        outputs.save_overlays(self.out / layer / "overlays.png", x, maps, masks, titles, data.mean, data.std)
        if self.wandb_run is None:
            return None
        from sslx.data.transforms import denormalize

        pixels = denormalize(x, data.mean, data.std)
        return tracking.overlay_table(layer, batch["index"].tolist(), pixels, masks, names, predicted, maps)

    def write_sweep_figures(self, results: dict[str, Any]) -> dict[str, Path]:
        """Per-layer plots (Fig. 4b analog) and a layer strip of the first overlay image (Fig. 5 analog)."""
        paths = outputs.save_layer_plots(self.out, results["layers"])
        if self.config.overlays > 0:
            batch, data = self.overlay_batch(), self.datasets
            x, label = batch["image"][:1], batch["label"][:1]
            method = self.config.methods[0]
            maps = {layer: explain_images(outputs.load_probe(self.out / layer / "probe.pt", self.model),
                                          EXPLAINED_MODULE, [method], x, label)[method]
                    for layer in self.layers}
            mask = batch["mask"][:1] if data.has_masks else None
            paths["layer_strip"] = outputs.save_layer_strip(self.out / "layer_strip.png", x[0], maps, mask,
                                                            data.mean, data.std)
        return paths

    # ---- the job -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train, explain, score and save every requested layer; print and return the results."""
        self.out.mkdir(parents=True, exist_ok=True)
        results = self.stored if self.stored is not None else self._new_results()
        results["config"] = self.config.as_dict()
        results["data"], results["splits"] = self.datasets.source, self.datasets.splits  # which images each split used
        if self.is_main:  # records the settings a later --resume is checked against
            outputs.write_json(self.metrics_path, results)
        with tracking.wandb_environment(self.config.wandb, self.out):
            self.wandb_run = (tracking.start_run(self.config.wandb, self.out, self.config.wandb_project,
                                           self.config.as_dict()) if self.is_main else None)
            try:
                self._run_layers(results)
            finally:
                if self.wandb_run is not None:
                    tracking.finish_run(self.wandb_run)
        if self.is_main:
            print("\n" + outputs.results_table({k: results["layers"][k] for k in self.layers}), flush=True)
            print(f"\n[sslx.probe] results in {self.metrics_path}", flush=True)
        return results

    def _run_layers(self, results: dict[str, Any]) -> None:
        logger = None
        if self.wandb_run is not None:
            from pytorch_lightning.loggers import WandbLogger

            logger = WandbLogger(experiment=self.wandb_run)
        for layer in self.layers:
            if self._layer_done(results, layer):
                if self.is_main:
                    print(f"[sslx.probe] {layer}: finished earlier, skipped (--resume)", flush=True)
                    tracking.log_layer(self.wandb_run, layer, outputs.flat_metrics(layer, results["layers"][layer]), None)
                continue
            probe, fit_stats = self.train_probe(layer, logger)
            explainable = probe.explainable().cpu()
            scores = self.evaluate(explainable)
            entry = {"probe": {**probe.description(), **fit_stats, "test_accuracy": scores["probe_accuracy"]},
                     "n_train_images": len(self.datasets.train), "n_eval_images": scores["n_images"],
                     "methods": scores["methods"]}
            if self.is_main:
                outputs.save_probe(self.out / layer / "probe.pt", explainable, probe.description())
                table = self.write_overlays(layer, explainable)
                results["layers"][layer] = entry
                results["data"] = self.datasets.source
                outputs.write_json(self.metrics_path, results)
                tracking.log_layer(self.wandb_run, layer, outputs.flat_metrics(layer, entry), table)
        if self.is_main and len(self.layers) > 1:
            tracking.log_images(self.wandb_run, self.write_sweep_figures(results))


def run(config: ProbeConfig) -> dict[str, Any]:
    """Run the probe job described by `config` (see ProbeJob)."""
    return ProbeJob(config).run()
