"""Copy the golden cases the tests use from ../shared/golden into this folder (compressed, f64 as stored).

Run from the repository root: python tests/golden_data/vendor.py [SHARED_GOLDEN]. Weights are not copied:
tests/golden.py regenerates them from the agf-golden-v1 recipe and checks them against the digests kept here.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
AGF_KEYS = ("target", "logits_f64", "heatmap_f64")
BASELINE_KEYS = ("target", "heatmap_f64")


def _cases(folder: Path) -> list[Path]:
    return sorted(p.parent for p in folder.glob("*/case.npz"))


def vendor(source: Path) -> None:
    """Write input_shapes.npz, agf/<case>.npz, baselines/<case>.npz, cases.json and weights_<arch>.json."""
    index: dict[str, dict] = {}
    for kind, folder, keys in (("agf", source, AGF_KEYS), ("baselines", source / "baselines", BASELINE_KEYS)):
        (HERE / kind).mkdir(exist_ok=True)
        for case_dir in _cases(folder):
            case = np.load(case_dir / "case.npz")
            meta = json.loads((case_dir / "meta.json").read_text())
            np.savez_compressed(HERE / kind / f"{case_dir.name}.npz", **{k: case[k] for k in keys})
            index[f"{kind}/{case_dir.name}"] = {"model": meta.get("model") or case_dir.name.split("_")[-2],
                                                "target": case["target"].tolist()}
            if kind == "agf" and case_dir.name == "vgg19_top":
                np.savez_compressed(HERE / "input_shapes.npz", input=case["input"])
    (HERE / "cases.json").write_text(json.dumps(index, indent=1) + "\n")
    for arch in ("vgg19", "resnet50"):
        ref = json.loads((source / f"weights_{arch}.sha256.json").read_text())
        digests = {name: t["sha256"] for name, t in ref["tensors"].items()}
        out = {"recipe": ref["recipe"], "all_sha256": ref["all_sha256"], "sha256": digests}
        (HERE / f"weights_{arch}.json").write_text(json.dumps(out, indent=0) + "\n")


if __name__ == "__main__":
    vendor(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "golden")
