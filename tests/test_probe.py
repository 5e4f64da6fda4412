"""LinearProbe (forward, explainable copy, statistics, resuming), samplers, Grad-CAM at the probed layer, result files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

import ssl_models
from probe_fixtures import one_thread, write_tiny_rotnet  # noqa: F401  (one_thread: autouse fixture)
from sslx import AGF
from sslx.probe.data import (GlobalBatchSampler, ProbeDataModule, ShardSampler, folder_datasets, held_out_sizes,
                             scenes_datasets)
from sslx.probe.evaluate import explain_both, make_explainer, nest_results
from sslx.probe.module import LinearProbe, probe_pool_size
from sslx.probe.outputs import load_probe, read_results, results_table, save_probe, write_json


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random RotNet-layout AlexNet checkpoint (gidariss layout, 64-px input, narrow widths)."""
    return write_tiny_rotnet(tmp_path_factory.mktemp("rotnet") / "model_net_epoch1", seed=11)


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint: Path) -> nn.Module:
    """The tiny RotNet loaded through ssl_models, in float64."""
    return ssl_models.load(tiny_checkpoint).double()


def _images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _ready_probe(model: nn.Module, layer: str = "conv4") -> LinearProbe:
    probe = LinearProbe(model, layer, num_classes=5).double()
    probe.fit_feature_statistics([{"image": _images(6, seed=1)}, {"image": _images(4, seed=2)}])
    with torch.no_grad():
        probe.head.linear.weight.copy_(torch.randn(probe.head.linear.weight.shape, dtype=torch.float64,
                                                   generator=torch.Generator().manual_seed(3)))
    return probe


# ---- geometry -------------------------------------------------------------------------------------
def test_pool_size_reproduces_the_rotnet_protocol_and_our_small_widths() -> None:
    # Gidaris et al.'s p at 224 px (maps 55, 27, 13, 13, 13; widths 64-192-384-256-256) are 12, 7, 5, 6, 6.
    assert [probe_pool_size(c, s) for c, s in [(64, 55), (192, 27), (384, 13), (256, 13), (256, 13)]] == [12, 7, 5, 6, 6]
    # the embedded 128-px RotNet: widths 32-64-96-64-64, maps 31-15-7-7-7
    assert [probe_pool_size(c, s) for c, s in [(32, 31), (64, 15), (96, 7), (64, 7), (64, 7)]] == [17, 12, 7, 7, 7]
    assert probe_pool_size(10_000, 5) == 1
    with pytest.raises(ValueError, match="channels must be a positive int"):
        probe_pool_size(0, 5)


def test_probe_geometry_follows_the_layer(tiny_model: nn.Module) -> None:
    probe = LinearProbe(tiny_model, "conv2", num_classes=3)
    # 64 px: conv1 15×15 → pool1 7 → conv2 7×7 with 16 channels; sqrt(9216/16) = 24 is capped at 7
    assert probe.feature_shape == (16, 7, 7)
    assert probe.pool_size == 7 and probe.num_features == 16 * 49
    assert probe.head.linear.in_features == 16 * 49 and probe.head.linear.out_features == 3
    assert LinearProbe(tiny_model, "conv2", num_classes=3, target_features=64).pool_size == 2


# ---- forward / explainable ---------------------------------------------------------------------------
def test_forward_matches_the_protocol_computed_by_hand(tiny_model: nn.Module) -> None:
    probe = _ready_probe(tiny_model).eval()
    x = _images(3, seed=4)
    maps = tiny_model.truncate("conv4")(x)
    pooled = F.adaptive_max_pool2d(maps, probe.pool_size)
    norm = probe.head.norm
    standardised = (pooled - norm.running_mean.view(1, -1, 1, 1)) / torch.sqrt(norm.running_var.view(1, -1, 1, 1) + norm.eps)
    expected = F.linear(standardised.flatten(1), probe.head.linear.weight, probe.head.linear.bias)
    torch.testing.assert_close(probe(x), expected, rtol=1e-12, atol=1e-12)


def test_explainable_equals_the_probe_and_is_a_plain_detached_copy(tiny_model: nn.Module) -> None:
    probe = _ready_probe(tiny_model)
    net = probe.explainable()
    assert isinstance(net, nn.Sequential) and list(dict(net.named_children())) == ["trunk", "pool", "norm", "flatten", "linear"]
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x = _images(4, seed=5)
    torch.testing.assert_close(net(x), probe.eval()(x), rtol=0, atol=0)
    with torch.no_grad():
        net.linear.weight.zero_()
    assert probe.head.linear.weight.abs().sum() > 0  # a copy, not a view of the probe


def test_agf_explains_the_probe_end_to_end(tiny_model: nn.Module) -> None:
    net = _ready_probe(tiny_model).explainable()
    x = _images(2, seed=6)
    maps = AGF(net).attribute(x, torch.tensor([0, 3]))
    assert maps.shape == (2, 1, 64, 64) and maps.dtype == torch.float64
    assert torch.isfinite(maps).all() and maps.abs().amax(dim=(1, 2, 3)).gt(0).all()
    # AGF maps are class specific: another target gives another map
    assert not torch.allclose(maps, AGF(net).attribute(x, torch.tensor([1, 1])))


def test_feature_statistics_are_exact_population_statistics(tiny_model: nn.Module) -> None:
    probe = LinearProbe(tiny_model, "conv3", num_classes=4).double()
    batches = [_images(5, seed=7), _images(3, seed=8)]
    probe.fit_feature_statistics([{"image": b} for b in batches])
    pooled = probe.head.pool(tiny_model.truncate("conv3")(torch.cat(batches)))
    torch.testing.assert_close(probe.head.norm.running_mean, pooled.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(probe.head.norm.running_var, pooled.var(dim=(0, 2, 3), unbiased=False))
    assert float(probe.stats_ready) == 1


def test_trunk_is_frozen_private_and_stays_in_eval_mode(tiny_model: nn.Module) -> None:
    probe = _ready_probe(tiny_model)
    # Lightning leaves modules in the mode they were built in, so they must be built in eval mode
    assert not probe.trunk.training and not probe.head.norm.training
    probe.train()
    assert not probe.trunk.training and not probe.head.norm.training
    assert all(not p.requires_grad for p in probe.trunk.parameters())
    assert all(p.requires_grad for p in tiny_model.parameters())  # the caller's model is untouched
    before = {k: v.clone() for k, v in probe.state_dict().items() if "linear" not in k}
    probe.head.linear.weight.grad = None
    loss = F.cross_entropy(probe._classify_pooled(probe.pooled_features({"image": _images(4)}, "train")),
                           torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert probe.head.linear.weight.grad is not None
    for key, value in probe.state_dict().items():
        if "linear" not in key:
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_feature_cache_returns_the_same_features(tiny_model: nn.Module) -> None:
    probe = _ready_probe(tiny_model)
    x = _images(4, seed=9)
    first = probe.pooled_features({"image": x, "index": torch.tensor([5, 6, 7, 8])}, "train")
    assert len(probe._feature_cache) == 4
    # cached entries are reused (a different image under a cached key proves it), new keys computed
    again = probe.pooled_features({"image": torch.zeros_like(x), "index": torch.tensor([5, 6, 7, 8])}, "train")
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    other = probe.pooled_features({"image": x, "index": torch.tensor([5, 6, 7, 8])}, "val")
    torch.testing.assert_close(other, first, rtol=0, atol=0)
    assert len(probe._feature_cache) == 8


def test_probe_rejects_bad_arguments(tiny_model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"unknown layer 'fc6'; probe-able layers are \('conv1'"):
        LinearProbe(tiny_model, "fc6", num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        LinearProbe(tiny_model, "conv1", num_classes=1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        LinearProbe(tiny_model, "conv1", num_classes=3, optimizer="lbfgs")
    with pytest.raises(TypeError, match="truncate"):
        LinearProbe(nn.Linear(2, 2), "conv1", num_classes=3)
    probe = LinearProbe(tiny_model, "conv1", num_classes=3).double()
    with pytest.raises(ValueError, match="3 channels"):
        probe(torch.zeros(1, 1, 64, 64, dtype=torch.float64))


# ---- samplers ----------------------------------------------------------------------------------------
def test_global_batches_are_the_same_for_one_and_two_processes() -> None:
    single = GlobalBatchSampler(10, 4, seed=3)
    shards = [GlobalBatchSampler(10, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 1):
        for s in [single, *shards]:
            s.set_epoch(epoch)
        one = list(single)
        two = list(zip(*(list(s) for s in shards)))
        assert [len(b) for b in one] == [4, 4, 2] and len(two) == 3
        assert [sorted(b) for b in one] == [sorted(a + b) for a, b in two]
        assert sorted(i for b in one for i in b) == list(range(10))
    single.set_epoch(0)
    first = list(single)
    single.set_epoch(1)
    assert list(single) != first  # a new permutation each epoch
    # a last global batch smaller than the number of processes is dropped
    assert len(GlobalBatchSampler(9, 4, rank=0, world_size=2)) == 2 and len(GlobalBatchSampler(9, 4)) == 3
    with pytest.raises(ValueError, match="smaller than the 4 processes"):
        GlobalBatchSampler(10, 2, world_size=4)


def test_shards_cover_every_index_once() -> None:
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(ShardSampler(7, r, 3)) for r in range(3)] == [3, 2, 2]


# ---- explanations -------------------------------------------------------------------------------------
def test_gradcam_reads_the_probed_layer(tiny_model: nn.Module) -> None:
    net = _ready_probe(tiny_model, "conv2").explainable()
    x = _images(2, seed=12)
    target = torch.tensor([1, 4])
    maps = make_explainer("gradcam", net, "trunk").attribute(x, target)
    # by hand: A = the probed layer's map, weights = spatial mean of ∂y_t/∂A, ReLU, max-normalised, resized
    a = net.trunk(x).detach().requires_grad_(True)
    logits = net.linear(net.flatten(net.norm(net.pool(a))))
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a.detach()).sum(dim=1, keepdim=True))
    cam = cam / cam.amax(dim=(1, 2, 3), keepdim=True)
    expected = F.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps, expected)
    with pytest.raises(ValueError, match="unknown explanation method 'lime'"):
        make_explainer("lime", net, "trunk")


def test_explain_both_reuses_the_label_map_where_the_prediction_agrees() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[list[int]] = []

        def attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            self.calls.append(target.tolist())
            return target.double().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()

    rec = Recorder()
    x = torch.zeros(3, 3, 2, 2)
    for_label, for_prediction = explain_both(rec, x, torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3]))
    assert rec.calls == [[1, 2, 3], [0]]
    assert for_label[:, 0, 0, 0].tolist() == [1, 2, 3] and for_prediction[:, 0, 0, 0].tolist() == [1, 0, 3]


def test_nest_results_rebuilds_the_nested_scores() -> None:
    fractions = (0.1, 0.5)
    logged = {"probe/accuracy": 75.0}
    for variant, base in (("predicted", 10.0), ("target", 20.0)):
        logged.update({f"agf/perturbation_{variant}/auc": base, f"agf/perturbation_{variant}/n_images": 8.0,
                       f"agf/perturbation_{variant}/accuracy@0.1": base + 1,
                       f"agf/perturbation_{variant}/accuracy@0.5": base + 2,
                       f"agf/perturbation_{variant}/auc_ci95_low": base - 3,
                       f"agf/perturbation_{variant}/auc_ci95_high": base + 3})
    logged.update({f"agf/segmentation/{k}": 50.123456 for k in
                   ("pixel_accuracy", "mAP", "mIoU", "iou_background", "iou_foreground")})
    logged.update({f"agf/segmentation/{k}_ci95_{end}": 40.0 if end == "low" else 60.0
                   for k in ("pixel_accuracy", "mAP", "mIoU") for end in ("low", "high")})
    logged["agf/segmentation/n_ap_images"] = 8.0
    nested = nest_results(logged, ["agf"], fractions, with_masks=True)
    assert nested["probe_accuracy"] == 75.0 and nested["n_images"] == 8
    agf = nested["methods"]["agf"]
    assert agf["mAP"] == 50.1235 and agf["n_ap_images"] == 8
    assert agf["perturbation_target"] == {"auc": 20.0, "fractions": [0.1, 0.5], "accuracy": [21.0, 22.0],
                                          "ci95": {"auc": [17.0, 23.0]}}
    assert agf["ci95"] == {"pixel_accuracy": [40.0, 60.0], "mAP": [40.0, 60.0], "mIoU": [40.0, 60.0]}
    with pytest.raises(KeyError, match="did not report 'gradcam/perturbation_predicted/auc'"):
        nest_results(logged, ["gradcam"], fractions, with_masks=False)


# ---- files --------------------------------------------------------------------------------------------
def test_saved_probe_loads_back_to_the_same_network(tiny_model: nn.Module, tmp_path: Path) -> None:
    probe = _ready_probe(tiny_model, "conv5")
    net = probe.explainable()
    path = save_probe(tmp_path / "probe.pt", net, probe.description())
    loaded = load_probe(path, tiny_model)
    x = _images(2, seed=10)
    torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a sslx.probe checkpoint"):
        load_probe(tmp_path / "foreign.pt", tiny_model)
    with pytest.raises(FileNotFoundError, match="probe checkpoint not found"):
        load_probe(tmp_path / "missing.pt", tiny_model)


def test_results_file_round_trip_and_corrupt_file(tmp_path: Path) -> None:
    path = write_json(tmp_path / "metrics.json", {"version": 1, "layers": {}, "config": {"epochs": 2}})
    assert read_results(path)["config"] == {"epochs": 2}
    assert read_results(tmp_path / "none.json") is None
    path.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        read_results(path)
    path.write_text(json.dumps({"something": "else"}))
    with pytest.raises(ValueError, match="not a sslx.probe results file"):
        read_results(path)


def test_results_table_lists_each_layer_and_method() -> None:
    entry = {"probe": {"test_accuracy": 81.25}, "methods": {"agf": {
        "pixel_accuracy": 70.0, "mAP": 60.04, "mIoU": 50.0,
        "perturbation_predicted": {"auc": 40.0}, "perturbation_target": {"auc": 39.96}}}}
    lines = results_table({"conv4": entry}).splitlines()
    assert lines[0].split()[:2] == ["layer", "method"]
    assert lines[2].split() == ["conv4", "agf", "81.2", "70.0", "60.0", "50.0", "40.0", "40.0"]


# ---- Lightning training and resuming -------------------------------------------------------------------
class _StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        trainer.should_stop = True


def _fit(model: nn.Module, out: Path, callbacks: list, ckpt_path: str | None = None) -> LinearProbe:
    datasets = scenes_datasets(64, model.preprocess.mean, model.preprocess.std, 20, 4, 4, seed=1)
    pl.seed_everything(0, verbose=False)
    probe = LinearProbe(model, "conv2", datasets.num_classes, lr=0.05)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False,
                         default_root_dir=str(out), callbacks=callbacks)
    trainer.fit(probe, datamodule=ProbeDataModule(datasets, batch_size=8), ckpt_path=ckpt_path)
    return probe


def test_training_resumed_from_the_lightning_checkpoint_ends_where_an_uninterrupted_one_does(
        tiny_checkpoint: Path, tmp_path: Path) -> None:
    model = ssl_models.load(tiny_checkpoint)
    straight = _fit(model, tmp_path / "straight", [])
    checkpoints = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_top_k=0, save_last=True)
    interrupted = _fit(model, tmp_path / "interrupted", [checkpoints, _StopAfterFirstEpoch()])
    assert interrupted.current_epoch == 1 and not torch.equal(interrupted.head.linear.weight, straight.head.linear.weight)
    resumed = _fit(model, tmp_path / "resumed", [], ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.current_epoch == 2
    for name in ("head.linear.weight", "head.linear.bias", "head.norm.running_mean", "head.norm.running_var"):
        torch.testing.assert_close(resumed.state_dict()[name], straight.state_dict()[name], rtol=0, atol=1e-7)
    # the exact statistics were restored with the checkpoint, not recomputed
    assert float(resumed.stats_ready) == 1


# ---- image-folder splits ----------------------------------------------------------------------------
def write_folder(root: Path, per_class: int, classes: tuple[str, ...] = ("cats", "dogs"), size: int = 20) -> Path:
    """`per_class` random PNG images in each class folder."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


def _folder(root: Path, val: int, test: int, seed: int = 0, train: int = 100):
    return folder_datasets(root, None, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), train, val, test, seed)


def test_held_out_sizes_never_overlap() -> None:
    assert held_out_sizes(10, 3, 4) == (3, 4)  # enough images: both requests met
    assert held_out_sizes(4, 2, 3) == (2, 2)  # shared in proportion 2 : 3 → 1.6 → 2, the rest to test
    assert held_out_sizes(2, 50, 50) == (1, 1)
    assert held_out_sizes(3, 1, 100) == (1, 2)
    with pytest.raises(ValueError, match="held-out part has 1 image"):
        held_out_sizes(1, 1, 1)
    with pytest.raises(ValueError, match="val_images must be a positive int"):
        held_out_sizes(10, 0, 1)


def test_folder_validation_and_test_images_are_disjoint_and_recorded(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", per_class=15)  # 20 % of each class held out: 3 + 3 = 6 images
    data = _folder(root, val=2, test=3)
    assert (len(data.train), len(data.val), len(data.test)) == (24, 2, 3)
    splits = data.splits
    assert {k: v["count"] for k, v in splits.items()} == {"train": 24, "val": 2, "test": 3}
    val, test, train = (set(splits[k]["indices"]) for k in ("val", "test", "train"))
    assert not val & test and not (val | test) & train
    assert all((root / path).is_file() for split in splits.values() for path in split["paths"])
    # the recorded indices are the images the splits really return
    folder = data.test.dataset.dataset  # test = Subset(held-out Subset(folder))
    samples = folder.samples
    for position, index in enumerate(splits["test"]["indices"]):
        assert torch.equal(data.test[position]["image"], folder[index]["image"])
        assert Path(samples[index][0]).name == Path(splits["test"]["paths"][position]).name
    # the same seed gives the same split; asking for more than is held out shares it without overlap
    assert _folder(root, val=2, test=3).splits == splits
    crowded = _folder(root, val=4, test=4).splits
    assert crowded["val"]["count"] + crowded["test"]["count"] == 6
    assert not set(crowded["val"]["indices"]) & set(crowded["test"]["indices"])


def test_scenes_splits_are_described(tmp_path: Path) -> None:
    data = scenes_datasets(32, (0.5,) * 3, (0.25,) * 3, 4, 3, 2, seed=5)
    assert {k: v["count"] for k, v in data.splits.items()} == {"train": 4, "val": 3, "test": 2}
    assert "'val' split (seed 5)" in data.splits["val"]["images"]


def test_image_scores_intervals_match_sslx_metrics_in_index_order() -> None:
    from sslx.metrics import mean_interval, mean_ratio_interval, ratio_interval, segmentation_counts
    from sslx.probe.evaluate import ImageScores

    gen = torch.Generator().manual_seed(4)
    maps = torch.randn(6, 1, 5, 5, generator=gen)
    masks = (torch.rand(6, 5, 5, generator=gen) > 0.5).long()
    flags = {v: torch.rand(6, 3, generator=gen) > 0.4 for v in ("predicted", "target")}
    ids = torch.tensor([5, 0, 3, 1, 4, 2])
    scores = ImageScores((0.1, 0.5, 0.9), with_masks=True)
    for part in (slice(3, 6), slice(0, 3)):  # batches out of order, as ranks of a DDP run deliver them
        scores.update(ids[part], {v: f[part] for v, f in flags.items()}, segmentation_counts(maps[part], masks[part]))
    out = scores.compute()
    order = torch.argsort(ids)
    counts = segmentation_counts(maps[order], masks[order])
    grid = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    auc = torch.trapezoid(flags["target"][order].double() * 100, grid, dim=1)
    assert out["perturbation_target"] == pytest.approx(mean_interval(auc))
    lo, hi = ratio_interval(counts["correct"], counts["total"])
    assert out["pixel_accuracy"] == pytest.approx((100 * lo, 100 * hi))
    lo, hi = mean_ratio_interval(counts["intersections"], counts["unions"])
    assert out["mIoU"] == pytest.approx((100 * lo, 100 * hi))
    lo, hi = mean_interval(counts["ap"])
    assert out["mAP"] == pytest.approx((100 * lo, 100 * hi))
    with pytest.raises(ValueError, match="needs the batch's segmentation counts"):
        scores.update(ids[:1], {v: f[:1] for v, f in flags.items()})
