"""ClusterHead (k-means centroids as a linear head) and Algorithm 2 on head-less models; the similarity target."""
from __future__ import annotations

import pytest
import torch

import sslx.ssl as ssl
import ssl_models
from modern_ssl_fixtures import moco_v2, write_moco
from sslx.cluster_head import ClusterHead, HeadedModel, beside
from sslx.neighbors import FeatureIndex


def _blobs(n_per: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 10.0, 0]])
    labels = torch.arange(3).repeat_interleave(n_per)
    return centres[labels] + 0.5 * torch.randn(3 * n_per, 4, generator=gen), labels


def test_hand_computed_logits_rank_like_nearest_centroid():
    centroids = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    head = ClusterHead(centroids, temperature=2.0)
    x = torch.tensor([[0.9, 5.0], [1.1, -3.0]], dtype=torch.float64)
    # logit_k = (2 c_k·x − ||c_k||²)/T: [0, (2·2·0.9 − 4)/2 = −0.2] and [0, (4.4 − 4)/2 = 0.2]
    torch.testing.assert_close(head(x), torch.tensor([[0.0, -0.2], [0.0, 0.2]], dtype=torch.float64))
    assert head.assign(x).tolist() == [0, 1]
    points = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(head.assign(points), torch.cdist(points, centroids).argmin(1))


def test_fit_recovers_blobs_deterministically():
    feats, labels = _blobs()
    head = ClusterHead.fit(feats, 3, seed=0)
    pred = head.assign(feats)
    mapping = {int(pred[labels == c].mode().values) for c in range(3)}
    assert len(mapping) == 3  # one cluster per blob
    for c in range(3):
        assert bool((pred[labels == c] == pred[labels == c][0]).all())
    again = ClusterHead.fit(feats.numpy(), 3, seed=0)
    torch.testing.assert_close(again.centroids, head.centroids)
    # temperature = mean squared distance to the assigned centroid ≈ 4 dims × 0.25 variance
    assert 0.6 < head.temperature < 1.4


def test_fit_from_index_save_load_and_bad_files(tmp_path):
    feats, _ = _blobs()
    index = FeatureIndex.from_features(feats, ids=torch.arange(500, 500 + len(feats)))
    head = ClusterHead.fit(index, 3, seed=1)
    path = head.save(beside(tmp_path / "ref.index"))
    assert path.name == "ref.index.clusters.pt"
    loaded = ClusterHead.load(path)
    torch.testing.assert_close(loaded.weight, head.weight)
    torch.testing.assert_close(loaded.bias, head.bias)
    assert loaded.temperature == head.temperature
    record = torch.load(path, weights_only=True)
    record["tensors"]["centroids"][0, 0] += 1.0
    torch.save(record, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="checksum does not match"):
        ClusterHead.load(tmp_path / "bad.pt")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt, truncated"):
        ClusterHead.load(tmp_path / "cut.pt")
    index.save(tmp_path / "ref.index")
    with pytest.raises(ValueError, match="not a sslx.ClusterHead file"):
        ClusterHead.load(tmp_path / "ref.index")
    with pytest.raises(FileNotFoundError):
        ClusterHead.load(tmp_path / "none.pt")


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="k .* must be an int ≥ 2"):
        ClusterHead.fit(torch.randn(10, 3), 1)
    with pytest.raises(ValueError, match="only 4 reference features"):
        ClusterHead.fit(torch.randn(4, 3), 5)
    with pytest.raises(ValueError, match="non-empty N×D"):
        ClusterHead.fit(torch.randn(0, 3), 2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ClusterHead.fit(torch.tensor([[0.0, float("nan")], [1.0, 2.0], [3.0, 4.0]]), 2)
    with pytest.raises(TypeError, match="floating point"):
        ClusterHead.fit(torch.ones(5, 2, dtype=torch.long), 2)


@pytest.fixture(scope="module")
def headless(tmp_path_factory):
    """A loaded head-less MoCo v2 model (small ResNet), its reference images, features and index."""
    path = write_moco(moco_v2(), tmp_path_factory.mktemp("m") / "moco.pth.tar")
    model = ssl_models.load(path).double()
    ref = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        feats = model.features(ref)
    return model, ref, feats, FeatureIndex.from_features(feats.float())


@pytest.mark.parametrize("mode", ["delta", "sum", "none"])
def test_algorithm2_on_headless_model_through_cluster_head(headless, mode):
    model, ref, feats, index = headless
    head = ClusterHead.fit(feats, 3, seed=0).double()
    x = ref[:2]
    with pytest.raises(ValueError, match="no SSL classifier"):
        ssl.explain(model, x, index, mode=mode)
    out = ssl.explain(model, x, index, mode=mode, head=head, exclude_ids=torch.arange(2))
    with torch.no_grad():
        d = torch.cdist(feats[:2], feats)
        d[torch.arange(2), torch.arange(2)] = float("inf")
        rows = d.argmin(1)
        sign = {"delta": -1.0, "sum": 1.0, "none": 0.0}[mode]
        expected = head(feats[:2] + sign * feats[rows])
    assert torch.equal(out.neighbor_ids[:, 0].cpu(), rows)
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.ssl_class, expected.argmax(1))
    assert out.heatmaps.shape == (2, 1, 32, 32) and bool(torch.isfinite(out.heatmaps).all())
    assert bool((out.heatmaps.flatten(1).abs().amax(1) > 0).all())
    # AGF of the completed model M = cluster head ∘ backbone, for the chosen clusters
    direct = ssl.METHODS["agf"](HeadedModel(model.backbone, head)).attribute(x, out.ssl_class)
    torch.testing.assert_close(out.heatmaps, direct)


def test_similarity_target(headless):
    model, ref, feats, index = headless
    x = ref[:3]
    out = ssl.explain_similarity(model, x, index, method="agf", exclude_ids=torch.arange(3))
    with torch.no_grad():
        d = torch.cdist(feats[:3], feats)
        d[torch.arange(3), torch.arange(3)] = float("inf")
        neighbour = feats[d.argmin(1)]
        cos = (feats[:3] * neighbour).sum(1) / (feats[:3].norm(dim=1) * neighbour.norm(dim=1))
    torch.testing.assert_close(out.cosine, cos, atol=1e-6, rtol=1e-6)
    assert out.heatmaps.shape == (3, 1, 32, 32) and bool(torch.isfinite(out.heatmaps).all())
    # the explained score of image b is ‖f_b‖·cos_b (output 0), against a constant 0 (output 1)
    unit = index.features_of(out.neighbor_ids[:, 0]).double()
    unit = unit / unit.norm(dim=1, keepdim=True)
    with torch.no_grad():
        for b in range(3):
            score = ssl.NeighborSimilarityModel(model.backbone, unit[b])(x[b:b + 1])[0]
            torch.testing.assert_close(score, torch.stack([feats[b].norm() * cos[b], torch.zeros((), dtype=score.dtype)]),
                                       atol=1e-6, rtol=1e-6)
    # batch-independent: image 1 alone gets the same map
    alone = ssl.explain_similarity(model, x[1:2], index, method="agf", exclude_ids=torch.tensor([1]))
    torch.testing.assert_close(alone.heatmaps[0], out.heatmaps[1])
    grads = ssl.explain_similarity(model, x, index, method="gradcam", exclude_ids=torch.arange(3))
    assert grads.heatmaps.shape == (3, 1, 32, 32)
    with pytest.raises(ValueError, match="unknown method"):
        ssl.explain_similarity(model, x, index, method="nope")
