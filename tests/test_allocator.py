"""keep_freed_memory(): freed memory is reused without page faults (checked in fresh interpreters: it is global)."""
from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import resource, sys, torch
from sslx.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def touch_and_free():  # like AGF's forward: activation-sized buffers, all alive at once, then freed
    blocks = [torch.ones(1 << 20) for _ in range(48)]  # 48 x 4 MiB
    del blocks
touch_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_and_free()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_second_time(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_reuses_memory_without_page_faults():
    applied, kept = _faults_second_time("keep")
    _, default = _faults_second_time("default")
    assert applied == "True"
    assert default > 40_000  # 192 MiB touched again = 49,152 pages: with glibc's defaults nearly all fault again
    assert kept < default / 4  # kept: most pages are reused (3,000-7,200 faults measured, against 49,100)
