"""sanity_checks.py and faithfulness.py run end to end on tiny sizes; flags and ranks follow their stated rules."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import faithfulness  # noqa: E402
import reviewer_common as rc  # noqa: E402
import sanity_checks  # noqa: E402

COMMON = ["--n-images", "2", "--batch-size", "2", "--threads", "1"]


def test_rank_table_by_hand():
    scores = {"a": {"x": {"m": 0.9, "d": 0.1}, "y": {"m": 0.5, "d": 0.1}, "z": {"m": 0.5, "d": 0.3}},
              "b": {"x": {"m": 0.1, "d": 0.2}, "y": {"m": 0.2, "d": 0.1}, "z": {"m": 0.3, "d": math.nan}}}
    ranks = rc.rank_table(scores, {"m": True, "d": False}, ["x", "y", "z"])
    # m (higher better): model a → x 1, y/z tie 2.5; model b → z 1, y 2, x 3
    assert ranks["m"] == {"x": 2.0, "y": 2.25, "z": 1.75}
    # d (lower better): model a → x/y tie 1.5, z 3; model b has a NaN and is left out
    assert ranks["d"] == {"x": 1.5, "y": 1.5, "z": 3.0}


def test_sanity_checks_flags_follow_the_rule(tmp_path: Path):
    data = sanity_checks.main(["--models", "vgg", "--methods", "gradcam,agf", "--out-dir", str(tmp_path), *COMMON])
    stored = json.loads((tmp_path / "sanity_checks.json").read_text())
    entry = stored["models"]["vgg"]
    assert entry["steps"] == ["head", "+50% backbone", "+100% backbone"]
    for method in ("gradcam", "agf"):
        e = entry["methods"][method]
        survives = e["spearman_abs"][sanity_checks.FLAG_STEP]["mean"]
        assert e["fails_randomisation"] == (survives >= sanity_checks.FLAG_THRESHOLD)
        assert (method in stored["failing"]["vgg"]) == e["fails_randomisation"]
        assert all(-1.0 <= s["mean"] <= 1.0 for s in e["spearman"] if not math.isnan(s["mean"]))
    assert data["flag_rule"]["threshold"] == 0.5 and (tmp_path / "sanity_checks_curves.png").is_file()


def test_faithfulness_writes_ranks_and_marks_flagged_methods(tmp_path: Path):
    (tmp_path / "sanity_checks.json").write_text(json.dumps({"failing": {"rotnet": ["agf"]}}))
    data = faithfulness.main(["--models", "rotnet", "--methods", "gradcam,agf", "--out-dir", str(tmp_path), *COMMON])
    scores = data["models"]["rotnet"]["methods"]
    assert set(scores["agf"]) == set(faithfulness.METRICS)
    for metric in ("pointing_game", "rank_accuracy", "knn_agreement_lerf"):
        assert 0.0 <= scores["agf"][metric]["mean"] <= 1.0
    assert scores["agf"]["road_morf"]["mean"] <= 0.6 + 1e-9  # area over p = 0.2 … 0.8 of a probability
    gap = scores["gradcam"]["road_lerf"]["mean"] - scores["gradcam"]["road_morf"]["mean"]
    assert scores["gradcam"]["road_gap"]["mean"] == pytest.approx(gap)
    assert sorted(data["mean_rank"]["road_gap"].values()) in ([1.0, 2.0], [1.5, 1.5])
    assert "AGF †" in (tmp_path / "faithfulness.md").read_text()
