"""Repeat the killed-rank test: ``python tests/engine/elastic_repeat.py N [NODES]``.

Not collected by pytest (no ``test_`` prefix). One uninterrupted 2-process run, then N
runs in which rank 1 is SIGKILLed after the first step checkpoint under
``torchrun --max-restarts 1`` (NODES=2: two torchruns meeting through c10d); prints
how many finished with the uninterrupted weights, and the slowest run (a hang would
show as a timeout, bounded by --dist_timeout).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from engine_support import assert_same_weights, write_dataset  # noqa: E402
from test_elastic import run_elastic  # noqa: E402


def main(n: int, nodes: int = 1) -> int:
    root = Path(tempfile.mkdtemp(prefix="elastic-repeat-"))
    data = write_dataset(root / "data", {"train": 16, "val": 4, "test": 6})
    assert run_elastic(data, root / "whole", None).returncode == 0
    ok, times = 0, []
    for i in range(n):
        start = time.monotonic()
        res = run_elastic(data, root / f"killed{i}", kill_rank=1, nodes=nodes)
        times.append(time.monotonic() - start)
        try:
            assert res.returncode == 0, res.stdout[-1500:]
            assert "resumed from" in res.stdout
            assert_same_weights(root / "whole", root / f"killed{i}")
            ok += 1
            print(f"run {i}: ok in {times[-1]:.0f} s", flush=True)
        except AssertionError as e:
            print(f"run {i}: FAILED in {times[-1]:.0f} s: {str(e)[-800:]}", flush=True)
    print(
        f"{ok}/{n} killed-rank runs finished with the uninterrupted weights; "
        f"slowest {max(times):.0f} s, median {sorted(times)[len(times) // 2]:.0f} s"
    )
    return 0 if ok == n else 1


if __name__ == "__main__":
    argv = [int(a) for a in sys.argv[1:]]
    sys.exit(main(*(argv or [10])))
