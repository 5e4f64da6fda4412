"""The embedded head-less MoCo v2 model (ssl_models/assets/moco.pth): published layout, features that separate the
scene classes well above chance, and Algorithm 2 end to end through a k-means head."""
from __future__ import annotations


import pytest
import torch

import sslx.ssl as ssl
import ssl_models
from ssl_models.embedded_assets import embedded_path
from embedded_eval import NUM_CLASSES, knn_accuracy, probe_accuracy, scene_tensors
from ssl_models.serialization import read_checkpoint
from sslx.cluster_head import ClusterHead
from sslx.neighbors import FeatureIndex

# chance is 1/12 = 8.3 %. On these scenes (720 train, 480 test) the asset gives a linear-probe accuracy of
# 71.3 % and kNN-20 51.9 %. The earlier queue-InfoNCE asset (collapsed features, docs/dev-notes/issue-15b.md) gave
# 23.8 % / 14.8 % and a random-init model of the same layout 10.6 % / 7.5 %: both fail these thresholds.
MIN_PROBE_ACCURACY = 0.60
MIN_KNN_ACCURACY = 0.40


@pytest.fixture(scope="module")
def data():
    """The embedded MoCo, features of 720 train and 480 test single-object scenes, and their classes."""
    st = scene_tensors()
    model = ssl_models.embedded("moco")
    out = {"model": model}
    for split, size in (("train", 720), ("test", 480)):
        scenes = st.load_split(split, size, "single")
        x = st.to_input(scenes.images)
        with torch.no_grad():
            out[split] = (x, model.features(x), scenes.labels)
    return out


def test_asset_has_the_published_moco_v2_layout():
    raw = read_checkpoint(embedded_path("moco"))
    assert set(raw) == {"epoch", "arch", "state_dict", "optimizer"}
    prefixes = {".".join(k.split(".")[:2]) for k in raw["state_dict"]}
    assert prefixes == {"module.encoder_q", "module.encoder_k", "module.queue", "module.queue_ptr"}
    assert "module.encoder_q.fc.0.weight" in raw["state_dict"] and "module.encoder_q.fc.2.weight" in raw["state_dict"]
    assert embedded_path("moco").stat().st_size <= 5e6


def test_features_separate_classes_above_chance(data):
    _, train_f, train_y = data["train"]
    _, test_f, test_y = data["test"]
    knn = knn_accuracy(train_f, train_y, test_f, test_y)
    assert knn >= MIN_KNN_ACCURACY, knn
    probe = probe_accuracy(train_f, train_y, test_f, test_y)
    assert probe >= MIN_PROBE_ACCURACY, probe


def test_algorithm2_through_kmeans_head(data):
    model = data["model"]
    train_x, train_f, _ = data["train"]
    index = FeatureIndex.from_features(train_f)
    head = ClusterHead.fit(index, NUM_CLASSES, seed=0)
    out = ssl.explain(model, data["test"][0][:2], index, mode="delta", head=head)
    assert out.heatmaps.shape == (2, 1, 128, 128) and bool(torch.isfinite(out.heatmaps).all())
    assert bool((out.heatmaps.flatten(1).abs().amax(1) > 0).all())
    assert int(out.ssl_class.max()) < NUM_CLASSES
