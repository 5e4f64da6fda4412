"""ModelGraph.run's forward savings for AGF: BatchNorm folded into convs, ReLU in place, same numbers."""
import pytest
import torch
import torchvision

from sslx import AGF
from sslx.attribution.graph import NORM, RELU


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=7).double().eval()
    for m in model.modules():  # non-trivial running statistics, so that a wrong fold shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def test_folded_forward_equals_the_model_and_keeps_what_agf_reads(resnet):
    agf = AGF(resnet)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    keep = agf._needed.__contains__
    with torch.no_grad():
        plain = agf.graph.run(x)
        folded = agf.graph.run(x, keep=keep, fold_norms=agf._forward_folds)
        logits = resnet(x)
    head = agf.graph.head.node
    assert torch.allclose(folded[head], logits, rtol=0, atol=1e-12)
    assert len(agf._forward_folds) == len(agf.graph.layers(NORM)) == 20  # every norm follows a conv no rule reads
    for node in agf._needed:  # every value a rule reads is the unfolded forward's value
        assert torch.allclose(folded[node], plain[node], rtol=0, atol=1e-12), node.name


def test_relu_overwrites_only_values_no_rule_reads(resnet, monkeypatch):
    """ResNet-18: the 9 ReLUs after a norm run in place; the 8 after a residual add (whose output the add rule
    reads) do not."""
    import sslx.attribution.graph as graph_module

    agf = AGF(resnet)
    overwritten = []
    original = graph_module.F.relu_
    monkeypatch.setattr(graph_module.F, "relu_", lambda t: overwritten.append(t.shape) or original(t))
    with torch.no_grad():
        agf.graph.run(torch.randn(1, 3, 64, 64, dtype=torch.float64), keep=agf._needed.__contains__,
                      fold_norms=agf._forward_folds)
    relus = agf.graph.layers(RELU)
    after_norm = [s for s in relus if agf.graph.steps[s.inputs[0]].kind == NORM]
    assert len(relus) == 17 and len(overwritten) == len(after_norm) == 9
    with torch.no_grad():  # AGF's forward: the 8 after a residual add too, since its add rule reads only y⁺
        overwritten.clear()
        agf.graph.run(torch.randn(1, 3, 64, 64, dtype=torch.float64), keep=agf._needed.__contains__,
                      fold_norms=agf._forward_folds, relu_over=agf._adds_into_relu)
    assert len(overwritten) == 17
    with torch.no_grad():  # without `keep` nothing is overwritten
        overwritten.clear()
        agf.graph.run(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    assert overwritten == []


def test_agf_with_the_folded_forward_equals_agf_without(resnet, monkeypatch):
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    agf = AGF(resnet)
    folded = agf.attribute(x, normalize=False)
    monkeypatch.setattr(agf, "_forward_folds", set())
    original_run = agf.graph.run
    # no in-place ReLU, no folds, no recorded max-pool indices (the walk finds them again)
    monkeypatch.setattr(agf.graph, "run", lambda x, keep=None, fold_norms=(), pool_indices=None, relu_over=(): original_run(x))
    unfolded = agf.attribute(x, normalize=False)
    assert folded.abs().max() > 0
    # the fold only reorders float64 roundings (measured: 3e-10 on a map whose maximum is 31)
    assert (folded - unfolded).abs().max() <= 1e-9 * unfolded.abs().max()
