"""Execute a notebook headlessly with this interpreter and export the rendered result as HTML.

    python experiments/notebooks/export.py     # runs ssl_semantics.ipynb, writes ssl_semantics.html next to it

The notebook file itself is not changed (it stays stripped); tests/test_notebook.py does the same run and
checks the outputs. Needs nbclient, nbconvert and ipykernel (the dev extra).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import nbformat
from nbformat import NotebookNode

from sslx._env import scoped_environ
from sslx._io import atomic_write

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "ssl_semantics.ipynb"
KERNEL = "sslx-export"
CELL_TIMEOUT_S = 600


@contextlib.contextmanager
def this_interpreter_kernel() -> Iterator[str]:
    """A kernelspec named KERNEL that runs sys.executable with the Agg backend, visible while inside the block."""
    from ipykernel.kernelspec import write_kernel_spec

    with tempfile.TemporaryDirectory(prefix="sslx-kernel-") as folder:
        write_kernel_spec(Path(folder) / "kernels" / KERNEL)
        jupyter_path = os.pathsep.join(filter(None, [folder, os.environ.get("JUPYTER_PATH")]))
        # MPLBACKEND is inherited by the kernel: no GUI backend on a headless machine
        with scoped_environ({"JUPYTER_PATH": jupyter_path, "MPLBACKEND": "Agg"}):
            yield KERNEL


def execute(path: Path = NOTEBOOK, cell_timeout_s: int = CELL_TIMEOUT_S) -> NotebookNode:
    """The notebook at `path` executed top to bottom in its own folder; raises CellExecutionError on any error."""
    from nbclient import NotebookClient

    if not path.is_file():
        raise FileNotFoundError(f"notebook {str(path)!r} does not exist")
    nb = nbformat.read(path, as_version=4)
    with this_interpreter_kernel() as kernel:
        client = NotebookClient(nb, kernel_name=kernel, timeout=cell_timeout_s,
                                resources={"metadata": {"path": str(path.parent)}})
        client.execute()
    return nb


def to_html(nb: NotebookNode) -> str:
    """The executed notebook as one self-contained HTML page (figures embedded as PNG data URIs)."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nb)
    return body


def png_outputs(nb: NotebookNode) -> int:
    """How many PNG images the notebook's outputs hold."""
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.outputs)


def write_html(html: str, path: Path) -> Path:
    """Write `html` to `path` atomically, readable by everyone (a committed artefact)."""
    atomic_write(path, lambda handle: handle.write(html.encode("utf-8")))
    path.chmod(0o644)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: execute a notebook, write its HTML next to it, report the time taken."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", nargs="?", type=Path, default=NOTEBOOK)
    parser.add_argument("--out", type=Path, help="default: the notebook's path with .html")
    args = parser.parse_args(argv)
    wall = time.perf_counter()
    nb = execute(args.notebook)
    html = to_html(nb)
    out = write_html(html, args.out or args.notebook.with_suffix(".html"))
    kernel_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"{out}: {png_outputs(nb)} figures, {len(html) / 1e6:.1f} MB; {time.perf_counter() - wall:.0f} s wall, "
          f"kernel CPU {kernel_cpu.ru_utime + kernel_cpu.ru_stime:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
