"""`python -m sslx.probe --metrics`: the reviewer metrics land in metrics.json beside the current ones."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from probe_fixtures import one_thread, write_tiny_rotnet  # noqa: F401  (one_thread: autouse fixture)
from sslx.metrics import pointing_game, relevance_mass
from sslx.probe.cli import main
from sslx.probe.evaluate import ReviewerScores, check_metrics, reviewer_scores
from sslx.probe.outputs import flat_metrics

TINY = ["--max-images", "16", "--val-images", "8", "--eval-images", "8", "--batch-size", "8", "--epochs", "1",
        "--eval-batch-size", "4", "--accelerator", "cpu", "--overlays", "0", "--wandb", "disabled"]


def test_probe_writes_selected_reviewer_metrics(tmp_path: Path) -> None:
    checkpoint = write_tiny_rotnet(tmp_path / "model_net_epoch1", seed=3)
    results = main(["--layer", "2", "--model", str(checkpoint), "--out", str(tmp_path / "out"), "--methods", "agf",
                    "--metrics", "road,pointing_game,relevance_mass", *TINY])
    stored = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert stored["config"]["metrics"] == ["road", "pointing_game", "relevance_mass"]
    entry = stored["layers"]["conv2"]["methods"]["agf"]
    assert "perturbation_predicted" in entry and "mAP" in entry  # the current metrics stay
    for key in ("road_morf", "road_lerf", "pointing_game", "relevance_mass"):
        score = entry[key]
        low, high = score["ci95"]
        assert low - 1e-4 <= score["mean"] <= high + 1e-4 and 1 <= score["n"] <= 8, key
    assert 0.0 <= entry["road_morf"]["mean"] <= 0.6 and 0.0 <= entry["pointing_game"]["mean"] <= 1.0
    assert "deletion" not in entry
    flat = flat_metrics("conv2", results["layers"]["conv2"])
    assert flat["conv2/agf/road_morf"] == entry["road_morf"]["mean"]


def test_reviewer_scores_equal_the_metric_functions() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3)).eval()
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 3, 4, 4, generator=gen)
    maps = torch.randn(3, 1, 4, 4, generator=gen)
    masks = torch.zeros(3, 4, 4, dtype=torch.long)
    masks[:, 1:3, 1:3] = 2
    out = reviewer_scores(model, pixels, maps, torch.tensor([0, 1, 2]), masks, ("pointing_game", "relevance_mass"),
                          lambda t: t)
    objects = (masks > 0).unsqueeze(1)
    assert torch.equal(out["pointing_game"], pointing_game(maps, objects).double())
    assert torch.allclose(out["relevance_mass"], relevance_mass(maps.clamp(min=0), objects).double(), equal_nan=True)
    scores = ReviewerScores(("pointing_game",))
    scores.update(torch.tensor([2, 0, 1]), {"pointing_game": torch.tensor([1.0, 0.0, float("nan")])})
    mean, low, high, n = scores.compute()["pointing_game"]
    assert (mean, n) == (0.5, 2) and 0.0 <= low <= high <= 1.0


def test_metric_selection_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        check_metrics(("road", "aopc"), True)
    with pytest.raises(ValueError, match="need object masks"):
        check_metrics(("pointing_game",), False)
    with pytest.raises(ValueError, match="twice"):
        check_metrics(("road", "road"), True)
    with pytest.raises(SystemExit):
        main(["--layer", "1", "--model", "rotnet", "--out", str(tmp_path), "--metrics", "nope"])
    assert "unknown metric(s) ['nope']" in capsys.readouterr().err
