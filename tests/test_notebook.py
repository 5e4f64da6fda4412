"""experiments/notebooks: ssl_semantics.ipynb is committed stripped, runs top to bottom, prints the models' numbers.

The test executes the notebook and recomputes its key numbers from the loaded models independently; it writes
nothing into the checkout (only `experiments/notebooks/export.py` writes the committed HTML).
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "experiments" / "notebooks"
NOTEBOOK = NOTEBOOKS / "ssl_semantics.ipynb"
# contingency plot, RotNet rotation bars, SSL explanation grid, 3 neighbour figures, 2 layer strips, layer plot,
# the MoCo neighbour figure
FIGURES = 10
TABLES = 3  # SeLa and SCAN contingency tables, RotNet rotation confusion
NUMBER = r"(\d+(?:\.\d+)?)"


def _module(name: str, path: Path) -> ModuleType:
    """A script of the repository imported by path (registered in sys.modules, as dataclasses need)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _script(name: str) -> ModuleType:
    return _module(f"notebooks_{name}", NOTEBOOKS / f"{name}.py")


def _executed_copy(cells: int = 2) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# title")]
                                  + [nbformat.v4.new_code_cell(f"print({i})") for i in range(cells)])
    for i, cell in enumerate(nb.cells[1:], start=1):
        cell.execution_count = i
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{i}\n")]
        cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    nb.cells[1].metadata["tags"] = ["keep-me"]
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.9"}
    return nb


def test_committed_notebook_is_stripped() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert sum(cell.cell_type == "code" for cell in nb.cells) >= 8
    assert _script("strip").dirty_parts(nb) == [], "run `python experiments/notebooks/strip.py` before committing"


def test_strip_removes_outputs_counts_and_run_metadata() -> None:
    strip = _script("strip")
    nb = _executed_copy()
    problems = strip.dirty_parts(nb)
    assert len(problems) == 1 + 2 * 2  # notebook metadata; per code cell: outputs, cell metadata
    stripped = strip.strip(nb)
    assert strip.dirty_parts(stripped) == []
    assert [c.outputs for c in stripped.cells[1:]] == [[], []]
    assert [c.execution_count for c in stripped.cells[1:]] == [None, None]
    assert stripped.cells[1].metadata == {"tags": ["keep-me"]}
    assert [c.source for c in stripped.cells] == ["# title", "print(0)", "print(1)"]
    nbformat.validate(stripped)


def test_strip_cli_checks_then_strips_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    strip = _script("strip")
    path = tmp_path / "run.ipynb"
    nbformat.write(_executed_copy(), path)
    before = path.read_bytes()
    assert strip.main(["--check", str(path)]) == 1
    assert "needs stripping" in capsys.readouterr().out and path.read_bytes() == before
    assert strip.main([str(path)]) == 0
    assert strip.main(["--check", str(path)]) == 0
    assert strip.dirty_parts(nbformat.read(path, as_version=4)) == []
    with pytest.raises(FileNotFoundError, match="missing.ipynb"):
        strip.main([str(tmp_path / "missing.ipynb")])


def test_export_runs_a_notebook_in_this_interpreter_and_embeds_its_figures(tmp_path: Path) -> None:
    export = _script("export")
    figure = ("import io, sys\nfrom IPython.display import Image\nfrom matplotlib.figure import Figure\n"
              "fig, png = Figure(), io.BytesIO()\nfig.subplots().plot([0, 1])\nfig.savefig(png, format='png')\n"
              "print(sys.executable)\nImage(png.getvalue())")
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(figure)]), path)
    assert export.main([str(path)]) == 0
    html = path.with_suffix(".html").read_text(encoding="utf-8")
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 1
    assert sys.executable in html  # the kernel ran this interpreter (the venv), not whatever `python3` is
    assert nbformat.read(path, as_version=4).cells[0].outputs == []  # the notebook file is left as it was

    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0")]), path)
    with pytest.raises(Exception, match="ZeroDivisionError"):
        export.execute(path)


def _numbers(pattern: str, text: str) -> list[tuple[float, ...]]:
    return [tuple(float(g) for g in match.groups()) for match in re.finditer(pattern, text)]


def _markdown_tables(outputs: list) -> list[list[list[str]]]:
    tables = []
    for out in outputs:
        if out.output_type == "display_data" and "text/markdown" in out.data:
            lines = out.data["text/markdown"].splitlines()
            tables.append([[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]])
    return tables


def _independent_numbers() -> dict[str, object]:
    """The notebook's headline numbers recomputed here from the embedded models and the same scenes."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    from sslx.assets import load_embedded
    from sslx.data.scenes import SCENE_CLASSES

    scene_tensors = _module("scene_tensors", ROOT / "experiments" / "scene_tensors.py")
    test = scene_tensors.load_split("test", 480, "single")
    x, y = scene_tensors.to_input(test.images), test.labels

    def predict(model, images):
        with torch.no_grad():
            return torch.cat([model(images[i:i + 240]) for i in range(0, len(images), 240)]).argmax(1)

    numbers: dict[str, object] = {}
    for name in ("sela", "scan"):
        model = load_embedded(name)
        assigned = predict(model, x).numpy()
        table = np.zeros((model.head.out_features, 12), dtype=np.int64)
        np.add.at(table, (assigned, y.numpy()), 1)
        rows, cols = linear_sum_assignment(table, maximize=True)
        joint = table / table.sum()
        clusters, classes = joint.sum(1), joint.sum(0)
        nz = joint > 0
        mutual = float((joint[nz] * np.log(joint[nz] / np.outer(clusters, classes)[nz])).sum())
        entropy = [float(-(p[p > 0] * np.log(p[p > 0])).sum()) for p in (clusters, classes)]
        numbers[name] = (100 * table.max(1).sum() / table.sum(), 100 * table[rows, cols].sum() / table.sum(),
                         2 * mutual / sum(entropy))
    # RotNet on the generator's own single-object test scenes, each turned by 0/90/180/270° (torch.rot90 k)
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    correct = (predict(load_embedded("rotnet"), rotated) == torch.arange(4).repeat_interleave(len(x))).view(4, -1)
    numbers["rotnet"] = 100 * float(correct.double().mean())
    numbers["rotnet_per_shape"] = {shape: 100 * float(correct[:, y == c].double().mean())
                                   for c, shape in enumerate(SCENE_CLASSES)}
    scan = load_embedded("scan")
    train = scene_tensors.load_split("train", 720, "single")
    with torch.no_grad():
        queries, reference = scan.backbone(x), scan.backbone(scene_tensors.to_input(train.images))
    nearest = torch.cdist(queries.double(), reference.double()).argmin(1)
    numbers["same_shape"] = 100 * float((train.labels[nearest] == y).double().mean())
    return numbers


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_notebook_runs_top_to_bottom_and_prints_the_models_numbers(tmp_path: Path) -> None:
    committed = NOTEBOOK.with_suffix(".html")
    before = committed.read_bytes() if committed.is_file() else None
    export = _script("export")
    nb = export.execute(NOTEBOOK)  # raises on the first cell that fails

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert [out for out in outputs if out.output_type == "error"] == []
    assert export.png_outputs(nb) == FIGURES
    text = "".join(out.text for out in outputs if out.output_type == "stream" and out.name == "stdout")
    tables = _markdown_tables(outputs)
    assert len(tables) == TABLES
    expected = _independent_numbers()

    # Section 1: clusters, recomputed from the embedded SeLa and SCAN on the same 480 test scenes.
    scenes = int(re.search(r"test: (\d+) scenes", text).group(1))
    assert scenes == 480
    for name, table in zip(("sela", "scan"), tables):
        summary = (rf"{name}: purity {NUMBER}%, Hungarian accuracy {NUMBER}%, NMI {NUMBER}; "
                   r"(\d+) test scenes in (\d+) of (\d+)")
        purity, hungarian, nmi, counted, used, k = _numbers(summary, text)[0]
        want_purity, want_hungarian, want_nmi = expected[name]
        assert purity == pytest.approx(want_purity, abs=0.051) and hungarian == pytest.approx(want_hungarian, abs=0.051)
        assert nmi == pytest.approx(want_nmi, abs=5e-4)
        assert counted == scenes and 1 <= used <= k and len(table) == used
        counts = [[int(v) if v != "·" else 0 for v in row[2:-1]] for row in table]
        assert [sum(row) for row in counts] == [int(row[1]) for row in table]
        assert sum(max(row) for row in counts) == pytest.approx(purity / 100 * scenes, abs=0.51)

    # RotNet: rotation accuracy on the generator's own test scenes as recomputed, overall and per shape; the
    # confusion table holds every test scene once per rotation and its diagonal is the printed accuracy.
    rotnet = rf"RotNet rotation accuracy: {NUMBER}% \((\d+) test scenes × 4 rotations"
    accuracy, per_rotation = _numbers(rotnet, text)[0]
    assert per_rotation == scenes
    assert accuracy == pytest.approx(expected["rotnet"], abs=0.051)
    assert accuracy > 2 * 25  # upright asymmetric shapes make rotation identifiable, and RotNet learnt it
    per_shape = {shape: float(acc) for shape, acc in
                 re.findall(rf"(\w+) {NUMBER}%", re.search(r"per shape: (.*)", text).group(1))}
    assert sorted(per_shape) == sorted(expected["rotnet_per_shape"])
    assert per_shape == pytest.approx(expected["rotnet_per_shape"], abs=0.051)
    assert list(per_shape.values()) == sorted(per_shape.values(), reverse=True)  # best-revealed shape first
    confusion = [[int(v) for v in row[1:]] for row in tables[2]]
    assert [sum(row) for row in confusion] == [scenes] * 4
    diagonal = 100 * sum(confusion[k][k] for k in range(4)) / (4 * scenes)
    assert diagonal == pytest.approx(accuracy, abs=0.051)  # printed with one decimal

    # Section 3: neighbours; the same-shape rate is the brute-force nearest neighbour's on SCAN's features.
    assert len(re.findall(r"→ neighbour train scene \d+", text)) == 3
    same = float(re.search(rf"nearest training scene has the same shape for {NUMBER}%", text).group(1))
    assert same == pytest.approx(expected["same_shape"], abs=0.051)
    miou = _numbers(rf"(?:Δ|Σ|w/o): pixel accuracy {NUMBER}%, mIoU {NUMBER}%, mAP {NUMBER}%", text)
    assert len(miou) == 3 and all(0 <= v <= 100 for row in miou for v in row)
    assert all(row[2] >= 50 for row in miou)  # the authors' two-channel AP of a binarised map is at least 1/2

    # Section 4: a probe per RotNet layer, better than chance somewhere; one mIoU per layer.
    probes = re.findall(rf"(conv\d): probe accuracy {NUMBER}%", text)
    assert [layer for layer, _ in probes] == [f"conv{i}" for i in range(1, 6)]
    assert max(float(acc) for _, acc in probes) > 2 * 100 / 12
    per_layer = re.search(r"AGF mIoU per layer: (.*) \(", text).group(1)
    assert [layer for layer, _ in re.findall(rf"(conv\d) {NUMBER}%", per_layer)] == [layer for layer, _ in probes]
    assert re.search(r"notebook ran in \d+ s wall, \d+ s CPU", text)

    html = export.to_html(nb)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == FIGURES  # embedded, not linked
    assert html.count("<table") >= TABLES + 1  # the introduction's table too
    for heading in ("1. Which true classes", "2. AGF explanations", "3. An image, its nearest neighbour",
                    "4. Per-layer linear probes"):
        assert heading in html
    shown = _numbers(rf"sela: purity {NUMBER}%, Hungarian accuracy {NUMBER}%", html)  # the page shows the numbers
    assert len(shown) == 1 and shown[0] == pytest.approx(expected["sela"][:2], abs=0.051)
    shown = _numbers(rf"same shape for {NUMBER}%", html)
    assert len(shown) == 1 and shown[0][0] == pytest.approx(expected["same_shape"], abs=0.051)
    out = export.write_html(html, tmp_path / "ssl_semantics.html")  # the test's copy, never the committed one
    assert out.parent == tmp_path
    assert (committed.read_bytes() if committed.is_file() else None) == before
