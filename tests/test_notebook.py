"""experiments/notebooks: ssl_semantics.ipynb is committed stripped, runs top to bottom and is exported to HTML."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "experiments" / "notebooks"
NOTEBOOK = NOTEBOOKS / "ssl_semantics.ipynb"
# contingency plot, RotNet rotation bars, SSL explanation grid, 3 neighbour figures, 2 layer strips, layer plot
FIGURES = 9
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


def _poses() -> tuple[str, ...]:
    return _module("scene_tensors", ROOT / "experiments" / "scene_tensors.py").POSES


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


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_notebook_runs_top_to_bottom_and_exports_html() -> None:
    export = _script("export")
    nb = export.execute(NOTEBOOK)  # raises on the first cell that fails

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert [out for out in outputs if out.output_type == "error"] == []
    assert export.png_outputs(nb) == FIGURES
    text = "".join(out.text for out in outputs if out.output_type == "stream" and out.name == "stdout")
    tables = _markdown_tables(outputs)
    assert len(tables) == TABLES

    # Section 1: clusters. Purity (many-to-one) can never be below the one-to-one Hungarian accuracy.
    scenes = int(re.search(r"test: (\d+) scenes", text).group(1))
    for name, table in zip(("sela", "scan"), tables):
        summary = (rf"{name}: purity {NUMBER}%, Hungarian accuracy {NUMBER}%, NMI {NUMBER}; "
                   r"(\d+) test scenes in (\d+) of (\d+)")
        purity, hungarian, nmi, counted, used, k = _numbers(summary, text)[0]
        assert 0 < hungarian <= purity <= 100 and 0 <= nmi <= 1
        assert counted == scenes and 1 <= used <= k and len(table) == used
        counts = [[int(v) if v != "·" else 0 for v in row[2:-1]] for row in table]
        assert [sum(row) for row in counts] == [int(row[1]) for row in table]
        assert sum(map(sum, counts)) == scenes
        assert sum(max(row) for row in counts) == pytest.approx(purity / 100 * scenes, abs=0.51)

    # RotNet: every pose evaluated; the generator's pose is provably at chance; the confusion table matches.
    poses = _poses()
    accuracy = {pose: acc for pose, acc in re.findall(rf"RotNet rotation accuracy, pose (\w+): {NUMBER}%", text)}
    assert list(accuracy) == list(poses)
    assert abs(float(accuracy["generator"]) - 25) < 8
    best = re.search(r"RotNet's pose \(best predicted\): (\w+)", text).group(1)
    assert float(accuracy[best]) == max(map(float, accuracy.values()))
    confusion = [[int(v) for v in row[1:]] for row in tables[2]]
    per_rotation = int(re.search(rf"pose {best}: [\d.]+% \((\d+) test scenes", text).group(1))
    assert [sum(row) for row in confusion] == [per_rotation] * 4
    diagonal = 100 * sum(confusion[k][k] for k in range(4)) / (4 * per_rotation)
    assert diagonal == pytest.approx(float(accuracy[best]), abs=0.051)  # printed with one decimal

    # Section 3: one line per neighbour figure, one score line per feature combination.
    assert len(re.findall(r"→ neighbour train scene \d+", text)) == 3
    miou = _numbers(rf"(?:Δ|Σ|w/o): pixel accuracy {NUMBER}%, mIoU {NUMBER}%, mAP {NUMBER}%", text)
    assert len(miou) == 3 and all(0 <= v <= 100 for row in miou for v in row)

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
    export.write_html(html, NOTEBOOK.with_suffix(".html"))
    assert NOTEBOOK.with_suffix(".html").read_text(encoding="utf-8") == html
