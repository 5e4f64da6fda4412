"""benchmarks/agf_speed.py: imports without the heavy optional packages, and its target bookkeeping (no timing)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import agf_speed  # noqa: E402

BLOCKER = '''
import importlib.abc, sys
BLOCKED = {"faiss", "captum", "wandb", "lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
'''


def test_benchmark_imports_without_faiss_captum_wandb_lightning(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import agf_speed; import sslx.attribution; "
            "from sslx.explain_api import METHODS; agf_speed.parse_args(['--device', 'cuda']); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _row(model, batch, agf_s, ratio, mem=(100.0, 80.0)):
    return agf_speed.Row(model, batch, agf_s, agf_s / ratio, ratio, *mem)


def test_targets_are_checked_per_row_and_across_batches():
    rows = [_row("resnet50", 1, 0.30, 2.4), _row("resnet50", 8, 0.25, 2.3), _row("vgg19", 1, 0.9, 2.7),
            _row("vgg19", 4, 0.8, 2.6)]
    assert agf_speed.failures(rows) == []
    rows = [_row("resnet50", 1, 0.30, 2.6), _row("resnet50", 8, 0.40, 2.4, mem=(300.0, 100.0))]
    missed = agf_speed.failures(rows)
    assert any("resnet50 B=1: ratio 2.60x > 2.5x" in m for m in missed)
    assert any("memory 3.00x" in m for m in missed)
    assert any("worse than" in m for m in missed)
    assert "NO" in agf_speed.format_row(rows[0]) and "2.5x" in agf_speed.format_row(rows[0])


def test_recorded_authors_numbers_say_where_they_come_from(monkeypatch, tmp_path):
    monkeypatch.setattr(agf_speed, "TIMING_FILE", tmp_path / "missing.json")
    ratios, source = agf_speed.recorded_authors_ratios()
    assert ratios["vgg19"] == pytest.approx(8.89) and "file not found" in source


def test_speedup_over_the_authors_is_their_ratio_over_ours():
    fast = agf_speed.Row("vgg19", 1, 1.0, 0.4, 2.5, authors=8.9)
    slow = agf_speed.Row("resnet50", 1, 1.0, 0.4, 2.5, authors=6.0)
    assert fast.speedup == pytest.approx(3.56) and fast.speedup_met
    assert slow.speedup == pytest.approx(2.4) and not slow.speedup_met
    assert agf_speed.failures([fast]) == []
    assert agf_speed.failures([slow]) == ["resnet50 B=1: 2.4x faster than the authors' code < 3.0x"]
    assert "3.6x" in agf_speed.format_row(fast)


def test_rows_from_several_processes_combine_to_their_medians():
    runs = [agf_speed.Row("resnet50", 1, 0.20, 0.080, 2.50, 130.0, 140.0, 12.0),
            agf_speed.Row("resnet50", 1, 0.17, 0.073, 2.33),
            agf_speed.Row("resnet50", 1, 0.19, 0.070, 2.71, authors=11.0)]
    row = agf_speed.combine(runs)
    assert (row.model, row.batch) == ("resnet50", 1)
    assert row.agf_s == pytest.approx(0.19) and row.fb_s == pytest.approx(0.073) and row.ratio == pytest.approx(2.50)
    assert (row.agf_mib, row.fb_mib) == (130.0, 140.0)  # memory is measured by one process only
    assert row.authors == pytest.approx(11.5)
    one = agf_speed.combine(runs[1:2])
    assert one.ratio == pytest.approx(2.33) and one.agf_mib is None and one.authors is None
    assert agf_speed.parse_args([]).processes == 3
    assert agf_speed._timing_only(agf_speed.parse_args([])).no_memory
