"""Golden parity: the attribution baselines against the authors' code (../shared/golden/baselines).

The float64 test explains every golden target of one (method, model) pair in one batch (VGG-19:
top-1 = 625 and class 281 together, so the batch also checks per-image targets); ResNet-50 cases use
target=None (top-1). Tolerances: ../shared/golden/README.md, "Baselines / Measured".
"""
import numpy as np
import pytest
import torch

from sslx.explain_api import METHODS

from golden import golden_model, load_case, rel_l2, shapes_input

TARGETS = {
    ("lrp", "vgg19"): ("top", "cls281"),
    ("lrp_ab", "vgg19"): ("top", "cls281"),
    ("clrp", "vgg19"): ("top", "cls281"),
    ("sglrp", "vgg19"): ("top", "cls281"),
    ("rap", "vgg19"): ("top", "cls281"),
    ("gradcam", "vgg19"): ("top", "cls281"),
    ("fullgrad", "vgg19"): ("top", "cls281"),
    ("lrp", "resnet50"): ("top",),
    ("lrp_ab", "resnet50"): ("top",),
    ("clrp", "resnet50"): ("top",),
    ("sglrp", "resnet50"): ("top",),
    ("rap", "resnet50"): ("top",),
    ("fullgrad", "resnet50"): ("top",),
}
GROUPS = list(TARGETS)
F64_TOL = 1e-6


def f32_tolerance(method: str, arch: str) -> float:
    """README: 2e-2 for the near-cancelling CLRP/SGLRP maps on VGG-19, 1e-3 otherwise."""
    return 2e-2 if method in ("clrp", "sglrp") and arch == "vgg19" else 1e-3


@pytest.fixture(scope="module")
def models():
    """One model per architecture for the whole module, cast in place to the dtype a test asks for
    (the golden weights are float32 values, so float32 <-> float64 casts are exact)."""
    cache: dict[str, torch.nn.Module] = {}

    def get(arch: str, dtype: torch.dtype) -> torch.nn.Module:
        if arch not in cache:
            cache[arch] = golden_model(arch, dtype)
        return cache[arch].to(dtype)

    return get


def _explain(models, method: str, arch: str, dtype: torch.dtype, targets: tuple[str, ...]):
    cases = [load_case(f"{method}_{arch}_{t}", baseline=True)[0] for t in targets]
    x = torch.from_numpy(shapes_input()).to(dtype).expand(len(cases), -1, -1, -1).contiguous()
    target = None if arch == "resnet50" else torch.tensor([int(c["target"][0]) for c in cases])
    heat = METHODS[method](models(arch, dtype)).attribute(x, target)
    assert heat.shape == (len(cases), 1, 224, 224) and heat.dtype == dtype
    return cases, heat.numpy()


@pytest.mark.parametrize("method,arch", GROUPS, ids=[f"{m}-{a}" for m, a in GROUPS])
def test_float64_matches_reference(models, method, arch):
    cases, heat = _explain(models, method, arch, torch.float64, TARGETS[(method, arch)])
    for i, case in enumerate(cases):
        ref = case["heatmap_f64"]
        err = rel_l2(heat[i:i + 1], ref)[0]
        assert err <= F64_TOL, f"{method}/{arch}/{TARGETS[(method, arch)][i]}: relative L2 {err:.3g}"
        # Same units too (LRP/RAP: logits; Grad-CAM/FullGrad: the reference's own scaling), not only shape.
        assert np.isclose(np.abs(heat[i]).max(), np.abs(ref).max(), rtol=1e-6)


@pytest.mark.parametrize("method,arch", GROUPS, ids=[f"{m}-{a}" for m, a in GROUPS])
def test_float32_within_readme_tolerance(models, method, arch):
    # One target per pair keeps the file within its time budget; float32 drift is per model, not per class.
    cases, heat = _explain(models, method, arch, torch.float32, ("top",))
    for i, case in enumerate(cases):
        err = rel_l2(heat[i:i + 1], case["heatmap_f64"])[0]
        assert err <= f32_tolerance(method, arch), f"{method}/{arch}: relative L2 {err:.3g} in float32"
