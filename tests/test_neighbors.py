"""Tests of sslx.neighbors: FAISS feature index, feature extraction, persistence and Lightning shards."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from sslx.neighbors import FeatureIndex, IndexedDataset, extract_features, model_fingerprint

faiss = pytest.importorskip("faiss")


# ---------------------------------------------------------------------------------------------- fixtures
class TinyNet(nn.Module):
    """torchvision-like classifier: conv ▸ BN ▸ ReLU ▸ pool ▸ flatten ▸ fc1 ▸ ReLU ▸ Dropout ▸ fc2."""

    def __init__(self, classes: int = 5, hidden: int = 12) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(24, hidden)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)
        return self.fc2(self.drop(torch.relu(self.fc1(h))))


class SSLNet(nn.Module):
    """The ssl_models convention: features(x) → B×D and an nn.Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DictImages(Dataset):
    """Images with dataset ids that are not positions (id = 100 + 3·position)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "index": 100 + 3 * i}


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def seeded_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    # non-trivial running stats, so eval mode differs from train mode
    net.bn.running_mean.uniform_(-0.5, 0.5)
    net.bn.running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(40, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def brute_force(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    b, q = torch.from_numpy(base).double(), torch.from_numpy(queries).double()
    if metric == "cosine":
        dist = 1 - nn.functional.normalize(q, dim=1) @ nn.functional.normalize(b, dim=1).T
    else:
        dist = torch.cdist(q, b) ** 2
    values, positions = dist.topk(k, dim=1, largest=False)
    return values.numpy(), positions.numpy()


def clustered(n: int, d: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d)).astype(np.float32) * 2
    base = centers[rng.integers(0, clusters, n)] + rng.standard_normal((n, d)).astype(np.float32)
    queries = centers[rng.integers(0, clusters, 300)] + rng.standard_normal((300, d)).astype(np.float32)
    return base, queries


# ---------------------------------------------------------------------------------------------- search
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_flat_search_equals_float64_brute_force(metric: str) -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3000, 48)).astype(np.float32)
    queries = rng.standard_normal((100, 48)).astype(np.float32)
    ids = rng.permutation(10_000)[:3000]
    index = FeatureIndex.from_features(base, ids, metric=metric)
    dist, found = index.search(torch.from_numpy(queries), k=5)
    ref_dist, ref_pos = brute_force(base, queries, 5, metric)
    assert found.dtype == torch.int64 and dist.dtype == torch.float32 and found.shape == (100, 5)
    np.testing.assert_array_equal(found.numpy(), ids[ref_pos])
    np.testing.assert_allclose(dist.numpy(), ref_dist, rtol=1e-4, atol=1e-4)


def test_results_follow_query_dtype_and_plain_arrays_give_tensors() -> None:
    base = np.eye(4, dtype=np.float32)
    index = FeatureIndex.from_features(base)
    dist, ids = index.search(torch.tensor([[1.0, 0, 0, 0.5]], dtype=torch.float64), k=2)
    assert dist.dtype == torch.float64 and ids.tolist() == [[0, 3]]
    # squared L2 by hand: to e0 → 0.25, to e3 → 1 + 0.25
    assert dist[0].tolist() == pytest.approx([0.25, 1.25])
    dist, ids = index.search(base[:1], k=1)
    assert isinstance(dist, torch.Tensor) and ids.tolist() == [[0]] and dist.tolist() == [[0.0]]


def test_exclude_ids_hand_computed_line() -> None:
    index = FeatureIndex.from_features(np.array([[0.0], [1.0], [3.0], [6.0]], dtype=np.float32), [10, 11, 12, 13])
    query = torch.tensor([[1.0], [1.0], [6.0]])
    dist, ids = index.search(query, k=2, exclude_ids=torch.tensor([11, 99, 13]))
    # row 0: itself (11) dropped → 10 (d²=1), 12 (d²=4); row 1: 99 not in S → 11 (0), 10 (1); row 2: → 12 (9), 11 (25)
    assert ids.tolist() == [[10, 12], [11, 10], [12, 11]]
    assert dist.tolist() == [[1.0, 4.0], [0.0, 1.0], [9.0, 25.0]]


def test_exclude_ids_never_returns_the_query_itself() -> None:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((500, 16)).astype(np.float32)
    ids = np.arange(500) * 2 + 1
    index = FeatureIndex.from_features(base, ids)
    dist, found = index.search(base[:50], k=3, exclude_ids=ids[:50])
    ref_dist, ref_pos = brute_force(base, base[:50], 4, "l2")
    np.testing.assert_array_equal(ref_pos[:, 0], np.arange(50))  # without exclusion, self comes first
    np.testing.assert_array_equal(found.numpy(), ids[ref_pos[:, 1:]])
    np.testing.assert_allclose(dist.numpy(), ref_dist[:, 1:], rtol=1e-4)


def test_ivf_recall_and_nprobe() -> None:
    base, queries = clustered(20_000, 64, 1000, seed=0)  # ~8 clusters per inverted list
    index = FeatureIndex.from_features(base, factory="IVF128,Flat")
    assert index.nprobe == 11  # default: round(sqrt(nlist))
    _, truth = brute_force(base, queries, 1, "l2")
    _, found = index.search(queries, k=1, nprobe=8)
    recall = float((found.numpy()[:, 0] == truth[:, 0]).mean())
    assert recall >= 0.95
    assert index.nprobe == 11  # the per-call nprobe does not stick
    _, exhaustive = index.search(queries, k=1, nprobe=128)
    np.testing.assert_array_equal(exhaustive.numpy()[:, 0], truth[:, 0])
    _, one_list = index.search(queries, k=1, nprobe=1)
    assert (one_list.numpy()[:, 0] == truth[:, 0]).mean() < recall  # nprobe really reaches FAISS


def test_features_of_round_trip_keeps_raw_features_and_shape() -> None:
    rng = np.random.default_rng(4)
    base = rng.standard_normal((200, 8)).astype(np.float32) * 5
    ids = rng.permutation(1000)[:200]
    index = FeatureIndex.from_features(base, ids, metric="cosine")
    _, found = index.search(base[:7], k=3)
    feats = index.features_of(found)
    assert feats.shape == (7, 3, 8)
    position = {int(i): p for p, i in enumerate(ids)}
    expected = base[[[position[int(i)] for i in row] for row in found.tolist()]]
    np.testing.assert_array_equal(feats.numpy(), expected)  # raw vectors, not the normalised ones
    assert torch.equal(index.features_of(int(ids[5])), torch.from_numpy(base[5]))
    with pytest.raises(ValueError, match=r"dataset ids \[-1, 5000\] are not in the index"):
        index.features_of([5000, -1])


# ---------------------------------------------------------------------------------------------- extraction
def test_extract_penultimate_is_input_of_last_linear_and_removes_hooks() -> None:
    net = seeded_net().eval()
    x = torch.rand(3, 3, 8, 8)
    feats = extract_features(net, x)
    with torch.no_grad():
        manual = torch.relu(net.fc1(net.pool(torch.relu(net.bn(net.conv(x)))).flatten(1)))
    torch.testing.assert_close(feats, manual, rtol=0, atol=0)
    assert no_hooks(net)


def test_extract_on_torchvision_resnet_and_named_layer() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=7).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        stem = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        l3 = net.layer3(net.layer2(net.layer1(stem)))
        manual = torch.flatten(net.avgpool(net.layer4(l3)), 1)
        penultimate = extract_features(net, x)
        named = extract_features(net, x, layer="layer3")
    torch.testing.assert_close(penultimate, manual)
    torch.testing.assert_close(named, l3.flatten(1))
    assert named.shape == (2, 256 * 2 * 2)
    assert no_hooks(net)


def test_extract_ssl_convention_uses_features_method() -> None:
    torch.manual_seed(0)
    net = SSLNet()
    x = torch.rand(2, 3, 6, 6)
    torch.testing.assert_close(extract_features(net, x), net.backbone(x))


def test_extract_removes_hooks_when_forward_fails() -> None:
    class Broken(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.conv(x)
            raise RuntimeError("boom inside forward")

    net = Broken()
    with pytest.raises(RuntimeError, match="boom inside forward"):
        extract_features(net, torch.rand(1, 3, 8, 8))
    with pytest.raises(RuntimeError, match="boom inside forward"):
        extract_features(net, torch.rand(1, 3, 8, 8), layer="bn")
    assert no_hooks(net)


def test_extract_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="has no nn.Linear"):
        extract_features(nn.Sequential(nn.Conv2d(3, 2, 1)), torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="no module named 'layer9'"):
        extract_features(TinyNet(), torch.rand(1, 3, 8, 8), layer="layer9")
    with pytest.raises(ValueError, match="4-D"):
        extract_features(TinyNet(), torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        extract_features(lambda x: x, torch.rand(1, 3, 8, 8))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- build
def test_build_with_dict_batches_keeps_ids_and_restores_mode(images: torch.Tensor) -> None:
    net = seeded_net().train()
    net.fc1.eval()  # a mixed mode must come back as it was
    loader = DataLoader(DictImages(images), batch_size=16)
    index = FeatureIndex.build(net, loader, progress=False)
    assert net.training and not net.fc1.training and net.bn.training
    assert index.ids.tolist() == [100 + 3 * i for i in range(40)]
    assert index.fingerprint == model_fingerprint(net) and index.layer == "penultimate"
    with torch.no_grad():
        expected = extract_features(net.eval(), images)  # eval-mode features (BN running stats, no dropout)
    torch.testing.assert_close(index.features_of(index.ids), expected)
    dist, ids = index.search_images(net.train(), images[:4], k=2, exclude_ids=torch.tensor([100, 103, 106, 109]))
    direct = index.search(expected[:4], k=2, exclude_ids=torch.tensor([100, 103, 106, 109]))
    assert torch.equal(ids, direct[1]) and torch.equal(dist, direct[0])
    assert net.training


def test_build_with_tuple_batches_uses_positions(images: torch.Tensor) -> None:
    net = seeded_net()
    loader = DataLoader(TensorDataset(images, torch.zeros(40)), batch_size=7)
    index = FeatureIndex.build(net, loader, metric="cosine", progress=False)
    assert index.ids.tolist() == list(range(40)) and index.metric == "cosine"
    _, ids = index.search_images(net, images[:5], k=1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_build_empty_dataloader_raises(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="yielded no images.*empty"):
        FeatureIndex.build(seeded_net(), DataLoader(TensorDataset(images[:0]), batch_size=4), progress=False)


# ---------------------------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat"])
def test_save_load_round_trip(tmp_path, images: torch.Tensor, factory: str) -> None:
    net = seeded_net()
    index = FeatureIndex.build(net, DataLoader(DictImages(images), batch_size=8), factory=factory, progress=False)
    if factory != "Flat":
        index.nprobe = 3
    path = index.save(tmp_path / "s.index")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.index"]  # no temp file left behind
    loaded = FeatureIndex.load(path, model=net)
    assert (loaded.dim, len(loaded), loaded.metric, loaded.factory, loaded.layer, loaded.fingerprint, loaded.nprobe) == (
        index.dim, len(index), index.metric, index.factory, index.layer, index.fingerprint, index.nprobe,
    )
    queries = index.features_of(index.ids[:10]) + 0.01
    for a, b in zip(index.search(queries, k=4), loaded.search(queries, k=4)):
        assert torch.equal(a, b)
    assert torch.equal(loaded.features_of(loaded.ids), index.features_of(index.ids))


@pytest.fixture
def saved(tmp_path, images: torch.Tensor):
    net = seeded_net()
    index = FeatureIndex.build(net, DataLoader(DictImages(images), batch_size=8), progress=False)
    return net, index, index.save(tmp_path / "ref.index")


def test_load_refuses_other_model_and_other_dimension(saved) -> None:
    net, _, path = saved
    with pytest.raises(ValueError, match="model mismatch"):
        FeatureIndex.load(path, model=seeded_net(seed=1))
    with pytest.raises(ValueError, match="feature dimension mismatch.*12-D.*9-D"):
        FeatureIndex.load(path, model=TinyNet(hidden=9))
    assert len(FeatureIndex.load(path, model=net)) == 40


def test_search_images_refuses_other_model_even_after_in_place_update(saved, images: torch.Tensor) -> None:
    net, index, _ = saved
    index.search_images(net, images[:2])
    with torch.no_grad():
        net.fc1.weight.mul_(2)  # in-place change must invalidate the cached verification
    with pytest.raises(ValueError, match="model mismatch"):
        index.search_images(net, images[:2])


def test_load_refuses_corrupt_payload_before_faiss(saved) -> None:
    _, _, path = saved
    data = bytearray(path.read_bytes())
    start = data.find(b"IxF2")  # FAISS IndexFlatL2 header inside the payload
    assert start > 0
    data[start + 4 : start + 12] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum does not match"):
        FeatureIndex.load(path)


def test_load_refuses_truncated_missing_and_foreign_files(saved, tmp_path) -> None:
    _, _, path = saved
    data = path.read_bytes()
    truncated = tmp_path / "truncated.index"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt, truncated"):
        FeatureIndex.load(truncated)
    with pytest.raises(FileNotFoundError, match="not found.*nowhere.index"):
        FeatureIndex.load(tmp_path / "nowhere.index")
    foreign = tmp_path / "weights.pt"
    torch.save(TinyNet().state_dict(), foreign)
    with pytest.raises(ValueError, match="is not a sslx.FeatureIndex file"):
        FeatureIndex.load(foreign)


# ---------------------------------------------------------------------------------------------- errors
def test_search_errors_name_the_problem() -> None:
    index = FeatureIndex.from_features(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="query features have dimension 5, the index holds dimension 4"):
        index.search(torch.rand(2, 5))
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        index.search(torch.rand(2, 4), k=0)
    with pytest.raises(ValueError, match="k=11 exceeds the 10 searchable"):
        index.search(torch.rand(2, 4), k=11)
    with pytest.raises(ValueError, match="k=10 exceeds the 9 searchable"):
        index.search(torch.rand(2, 4), k=10, exclude_ids=[0, 1])
    with pytest.raises(ValueError, match="exclude_ids has 1 ids for 2 images"):
        index.search(torch.rand(2, 4), exclude_ids=[0])
    with pytest.raises(ValueError, match="NaN or Inf"):
        index.search(torch.full((1, 4), float("nan")))
    with pytest.raises(ValueError, match="2-D"):
        index.search(torch.rand(4))
    with pytest.raises(TypeError, match="floating point"):
        index.search(torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="nprobe only applies to IVF"):
        index.search(torch.rand(1, 4), nprobe=4)


def test_construction_errors_name_the_problem() -> None:
    base = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"'IVF100,Flat' needs at least 100 training vectors.*got 50"):
        FeatureIndex.from_features(base, factory="IVF100,Flat")
    with pytest.raises(ValueError, match=r"'PQ2' needs at least 256 training vectors"):
        FeatureIndex.from_features(base, factory="PQ2")
    with pytest.raises(ValueError, match="cannot build index factory 'Bogus7'"):
        FeatureIndex.from_features(base, factory="Bogus7")
    with pytest.raises(ValueError, match="metric must be one of"):
        FeatureIndex.from_features(base, metric="manhattan")
    with pytest.raises(ValueError, match=r"ids must be unique, got duplicates \[3\]"):
        FeatureIndex.from_features(base[:3], [3, 3, 4])
    with pytest.raises(ValueError, match="dataset ids must be >= 0"):
        FeatureIndex.from_features(base[:2], [-1, 4])
    with pytest.raises(ValueError, match=r"rows \[1\] are zero vectors"):
        FeatureIndex.from_features(np.array([[1.0, 0], [0, 0]], dtype=np.float32), metric="cosine")
    with pytest.raises(ValueError, match="features is empty"):
        FeatureIndex.from_features(np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="nprobe must be an int >= 1"):
        FeatureIndex.from_features(base, factory="IVF4,Flat", nprobe=0)


# ---------------------------------------------------------------------------------------------- Lightning shards
class PaddedIds(Dataset):
    """Like DistributedSampler padding: the last samples repeat the first ones."""

    def __init__(self, images: torch.Tensor, pad: int) -> None:
        self.inner, self.pad = DictImages(images), pad

    def __len__(self) -> int:
        return len(self.inner) + self.pad

    def __getitem__(self, i: int) -> dict:
        return self.inner[i % len(self.inner)]


def predict_shards(net: nn.Module, dataset: Dataset, out_dir, batch_size: int = 6) -> None:
    import pytorch_lightning as pl

    from sslx.neighbors import FeatureExtractor, ShardWriter

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=out_dir.parent,
        callbacks=[ShardWriter(out_dir)],
    )
    trainer.predict(FeatureExtractor(net), DataLoader(dataset, batch_size=batch_size), return_predictions=False)


def test_lightning_shards_equal_direct_build(tmp_path, images: torch.Tensor) -> None:
    net = seeded_net().train()
    direct = FeatureIndex.build(net, DataLoader(DictImages(images), batch_size=8), progress=False)
    shard_dir = tmp_path / "shards"
    predict_shards(net, PaddedIds(images, pad=4), shard_dir)
    assert net.training  # Lightning restored the mode
    names = sorted(p.name for p in shard_dir.iterdir())
    assert "features_rank0_batch0.npy" in names and "ids_rank0_batch7.npy" in names and "manifest_rank0.json" in names
    merged = FeatureIndex.from_shards(shard_dir)
    assert merged.ids.tolist() == direct.ids.tolist()  # sorted by id, the 4 padding duplicates dropped
    assert (merged.fingerprint, merged.layer) == (direct.fingerprint, direct.layer)
    torch.testing.assert_close(merged.features_of(merged.ids), direct.features_of(direct.ids))
    queries = direct.features_of(direct.ids[:6])
    for a, b in zip(merged.search(queries, k=3, exclude_ids=direct.ids[:6]), direct.search(queries, k=3, exclude_ids=direct.ids[:6])):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="already holds shards of rank 0"):
        predict_shards(net, DictImages(images), shard_dir)


def test_from_shards_errors(tmp_path, images: torch.Tensor) -> None:
    with pytest.raises(FileNotFoundError, match="shard directory not found"):
        FeatureIndex.from_shards(tmp_path / "absent")
    with pytest.raises(ValueError, match="no manifest_rank"):
        FeatureIndex.from_shards(tmp_path)
    predict_shards(seeded_net(), DictImages(images[:10]), tmp_path / "s", batch_size=4)
    (tmp_path / "s" / "features_rank0_batch1.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="features_rank0_batch1.npy is corrupt or truncated"):
        FeatureIndex.from_shards(tmp_path / "s")
    (tmp_path / "s" / "ids_rank0_batch0.npy").unlink()
    with pytest.raises(FileNotFoundError, match="listed in the manifest is missing"):
        FeatureIndex.from_shards(tmp_path / "s")


def test_from_shards_merges_ranks_and_drops_padding(tmp_path) -> None:
    from sslx.neighbors.shard_files import shard_stem, write_manifest, write_shard

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((5, 3)).astype(np.float32)
    # two ranks of a DistributedSampler over ids 0..4: rank 1 is padded with id 0 again
    rank_ids = {0: np.array([0, 2, 4]), 1: np.array([1, 3, 0])}
    for rank, ids in rank_ids.items():
        entry = write_shard(tmp_path, shard_stem(rank, 0), feats[ids], ids)
        if rank == 0:
            write_manifest(tmp_path, rank, 2, "penultimate", "abc", 3, [entry])
    with pytest.raises(ValueError, match=r"shards of ranks \[1\] are missing"):
        FeatureIndex.from_shards(tmp_path)
    write_manifest(tmp_path, 1, 2, "penultimate", "abc", 3, [{"features": "features_rank1_batch0.npy", "ids": "ids_rank1_batch0.npy", "count": 3}])
    merged = FeatureIndex.from_shards(tmp_path, metric="cosine")
    assert merged.ids.tolist() == [0, 1, 2, 3, 4] and merged.fingerprint == "abc" and merged.metric == "cosine"
    np.testing.assert_array_equal(merged.features_of(merged.ids).numpy(), feats)
    # the padding copy of id 0 must agree with the original: a mismatch means mixed runs
    write_shard(tmp_path, shard_stem(1, 0), feats[[1, 3, 2]], np.array([1, 3, 0]))
    with pytest.raises(ValueError, match="appears in several shards with different features"):
        FeatureIndex.from_shards(tmp_path)


def test_feature_extractor_requires_dataset_ids(tmp_path, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="needs dataset ids"):
        predict_shards(seeded_net(), TensorDataset(images[:4]), tmp_path / "s")
    wrapped = IndexedDataset(TensorDataset(images[:4]))
    assert wrapped[2]["index"] == 2 and torch.equal(wrapped[2]["image"], images[2])


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.skipif(
    not (torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0),
    reason="needs CUDA and a GPU build of FAISS",
)
def test_gpu_flat_index_matches_cpu() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2000, 32)).astype(np.float32)
    cpu = FeatureIndex.from_features(base)
    gpu = FeatureIndex.from_features(base, device="cuda")
    assert gpu.on_gpu and not cpu.on_gpu
    queries = torch.from_numpy(base[:50]) + 0.1
    (dc, ic), (dg, ig) = cpu.search(queries, k=5), gpu.search(queries.cuda(), k=5)
    assert ig.device.type == "cuda" and torch.equal(ic, ig.cpu())
    torch.testing.assert_close(dc, dg.cpu(), rtol=1e-4, atol=1e-4)
