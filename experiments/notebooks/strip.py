"""Strip notebooks for git: no outputs, no execution counts, no run metadata (an nbstripout equivalent).

    python experiments/notebooks/strip.py            # strips experiments/notebooks/*.ipynb in place
    python experiments/notebooks/strip.py --check    # only lists unstripped notebooks (exit status 1 if any)
    python experiments/notebooks/strip.py A.ipynb …  # given notebooks only
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import nbformat
from nbformat import NotebookNode

from sslx._io import atomic_write

HERE = Path(__file__).resolve().parent
# Notebook-level metadata kept in git: the kernel a reader needs, not the one (or the versions) it last ran with.
CANONICAL_METADATA = {
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
CELL_METADATA_KEPT = ("tags",)  # execution timings, scroll/collapse state and the like are dropped


def dirty_parts(nb: NotebookNode) -> list[str]:
    """What `strip` would remove from `nb`, one line per cell or metadata problem (empty when clean)."""
    problems = []
    if dict(nb.metadata) != CANONICAL_METADATA:
        problems.append(f"notebook metadata {sorted(nb.metadata)} is not the canonical kernelspec/language_info")
    for i, cell in enumerate(nb.cells):
        extra = sorted(set(cell.get("metadata", {})) - set(CELL_METADATA_KEPT))
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            problems.append(f"cell {i}: {len(cell.outputs)} outputs, execution count {cell.execution_count}")
        if extra:
            problems.append(f"cell {i}: metadata {extra}")
    return problems


def strip(nb: NotebookNode) -> NotebookNode:
    """`nb` with outputs, execution counts and run metadata removed (in place; also returned)."""
    nb.metadata = nbformat.from_dict(CANONICAL_METADATA)
    for cell in nb.cells:
        cell.metadata = nbformat.from_dict({k: v for k, v in cell.get("metadata", {}).items()
                                            if k in CELL_METADATA_KEPT})
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def strip_file(path: Path, check: bool) -> list[str]:
    """The problems `dirty_parts` finds in the notebook at `path`; unless `check`, the file is then stripped."""
    if not path.is_file():
        raise FileNotFoundError(f"notebook {str(path)!r} does not exist")
    nb = nbformat.read(path, as_version=4)
    problems = dirty_parts(nb)
    if problems and not check:
        text = nbformat.writes(strip(nb)) + "\n"
        atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
        path.chmod(0o644)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: strip (or --check) the given notebooks, by default every notebook next to this script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: experiments/notebooks/*.ipynb")
    parser.add_argument("--check", action="store_true", help="report unstripped notebooks, change nothing")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(HERE.glob("*.ipynb"))
    dirty = 0
    for path in paths:
        problems = strip_file(path, args.check)
        if problems:
            dirty += 1
            verb = "needs stripping" if args.check else "stripped"
            print(f"{path}: {verb}: " + "; ".join(problems))
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
