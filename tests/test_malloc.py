"""glibc keeps freed memory for reuse once the daemon asks: a thread that allocates and frees
a model call's worth of activations over and over stops page-faulting them back in."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# Run in a fresh interpreter each time: malloc settings are process-wide and sticky.
_PROBE = """
import resource, sys, threading
import numpy as np
if sys.argv[1] == "hold":
    from lobstream.engine.malloc import hold_freed_memory
    assert hold_freed_memory() is True

def calls(n):
    # blocks of a few MB, allocated, touched and freed together, as a model call's activations
    rng = np.random.default_rng(0)
    for _ in range(n):
        blocks = []
        for mb in (3, 1, 2, 5, 1):
            a = np.empty(int(mb * (1 << 20) * rng.uniform(0.8, 1.2)), np.uint8)
            a[::4096] = 1
            blocks.append(a)
        del blocks

out = []
def work():
    calls(3)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    calls(20)
    out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

t = threading.Thread(target=work)  # not the main thread, as the inference thread
t.start()
t.join()
print(out[0])
"""


def _faults(mode: str) -> int:
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    return int(res.stdout.strip())


def test_freed_blocks_are_reused_not_faulted_back_in():
    held, default = _faults("hold"), _faults("default")
    pages_per_call = 12 * (1 << 20) // 4096
    # glibc's defaults give the blocks back and fault them in again (~5,400 here for 20 calls)
    assert default > pages_per_call
    assert held < pages_per_call // 4  # ~200 here
