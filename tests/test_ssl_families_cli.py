"""`python -m sslx.probe --model PATH --layer 4` accepts every modern SSL checkpoint family (upstream-layout files)."""
from __future__ import annotations

from pathlib import Path

import pytest

from modern_ssl_fixtures import (dino_pair, moco_v2, write_backbone_only, write_converted, write_dino_full, write_moco,
                                 write_moco_v3, write_simclr_v2, write_swav, write_vicreg)
from probe_fixtures import one_thread  # noqa: F401  (autouse: one thread)
from sslx.probe.cli import build_parser, main
from sslx.probe.run import ProbeConfig, ProbeJob

TINY = ["--max-images", "6", "--val-images", "2", "--eval-images", "2", "--batch-size", "6", "--epochs", "1",
        "--eval-batch-size", "2", "--accelerator", "cpu", "--methods", "gradcam", "--overlays", "0",
        "--wandb", "disabled", "--layer", "4"]


def _write(family: str, folder: Path) -> tuple[Path, list[str]]:
    if family == "moco":
        return write_moco(moco_v2(), folder / "moco_v2_800ep_pretrain.pth.tar"), []
    if family == "moco_v3":
        return write_moco_v3(folder / "r-50-300ep.pth.tar")[1], []
    if family == "swav":
        return write_swav(folder / "swav_800ep_pretrain.pth.tar")[1], []
    if family == "dino":
        return write_dino_full(folder / "dino_resnet50_pretrain_full_checkpoint.pth")[1], []
    if family == "dino_backbone":
        return write_backbone_only(dino_pair()[0].backbone, folder / "dino_resnet50_pretrain.pth"), ["--kind", "dino"]
    if family == "vicreg":
        return write_vicreg(folder / "vicreg.pth")[1], []
    if family == "simclr_v2":
        return write_simclr_v2(folder / "r50_1x_sk0.pth")[2], []
    path = write_converted(folder / f"{family}.pth")[1]
    return path, ["--kind", family]


FAMILIES = ["moco", "moco_v3", "swav", "dino", "dino_backbone", "vicreg", "simclr_v2", "simclr", "byol"]


@pytest.mark.parametrize("family", FAMILIES)
def test_probe_job_accepts_family(tmp_path, family):
    """The CLI's options for each family build the probe job: model loaded, layer 4 resolved, data ready."""
    path, extra = _write(family, tmp_path)
    args = build_parser().parse_args(["--model", str(path), "--out", str(tmp_path / "out"), *TINY, *extra])
    job = ProbeJob(ProbeConfig(**vars(args)))
    assert job.layers == ["layer4"]
    assert job.model.info["kind"] == {"moco_v3": "moco", "dino_backbone": "dino", "simclr_v2": "simclr"}.get(family, family)
    image = job.datasets.train[0]["image"] if isinstance(job.datasets.train[0], dict) else job.datasets.train[0][0]
    assert job.model.truncate("layer4")(image[None]).shape[1] == 2048


def test_probe_main_runs_end_to_end_on_moco(tmp_path):
    path, _ = _write("moco", tmp_path)
    results = main(["--model", str(path), "--out", str(tmp_path / "out"), *TINY])
    probe = results["layers"]["layer4"]["probe"]
    assert 0.0 <= probe["test_accuracy"] <= 100.0 and probe["num_features"] > 0
    assert "gradcam" in results["layers"]["layer4"]["methods"]
    assert (tmp_path / "out" / "metrics.json").is_file()


def test_probe_kind_errors(tmp_path, capsys):
    path = write_converted(tmp_path / "simclr.pth")[1]
    with pytest.raises(SystemExit) as info:
        main(["--model", str(path), "--out", str(tmp_path / "o"), *TINY])
    assert info.value.code == 2
    assert "kind='simclr' / 'byol'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(path), "--kind", "barlow", "--out", str(tmp_path / "o"), *TINY])
    assert "unknown --kind 'barlow'" in capsys.readouterr().err


def test_explain_cli_on_moco_needs_and_uses_a_cluster_head(tmp_path, capsys):
    import numpy as np
    import torch
    from PIL import Image

    from sslx.cli_explain import main as explain_main
    from sslx.cluster_head import ClusterHead

    path, _ = _write("moco", tmp_path)
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image)
    assert explain_main([str(image), "--model", str(path), "--out", str(tmp_path / "o.png")]) == 2
    assert "--cluster-head" in capsys.readouterr().err
    heads = tmp_path / "ref.index.clusters.pt"
    ClusterHead.fit(torch.randn(50, 2048, generator=torch.Generator().manual_seed(0)), 4).save(heads)
    assert explain_main([str(image), "--model", str(path), "--cluster-head", str(heads), "--method", "gradcam",
                         "--out", str(tmp_path / "o.png")]) == 0
    printed = capsys.readouterr().out
    assert "k-means head (K=4)" in printed or "cluster" in printed
    assert (tmp_path / "o.png").is_file()
    converted = write_converted(tmp_path / "byol.pth")[1]
    assert explain_main([str(image), "--model", str(converted), "--out", str(tmp_path / "b.png")]) == 2
    assert "kind='simclr' / 'byol'" in capsys.readouterr().err
    assert explain_main([str(image), "--model", str(converted), "--kind", "byol", "--method", "gradcam",
                         "--out", str(tmp_path / "b.png")]) == 0
