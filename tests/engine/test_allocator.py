"""``--allocator``: glibc keeps freed blocks (no page faults on re-allocation), and a user's
own allocator choice is left alone."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from aptune.engine import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

#: a step's pattern: many large blocks (above glibc's default 128 KiB mmap threshold)
#: allocated and touched, then all freed; prints the minor page faults of the third round.
#: glibc's default raises its mmap threshold after the first frees, but then trims the
#: freed heap top (64 MiB here) back to the OS, so every round faults its pages again
FAULTS = textwrap.dedent(
    """
    import ctypes, resource, sys
    from aptune.engine.allocator import tune_allocator
    print(tune_allocator(sys.argv[1]), file=sys.stderr)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 4 << 20, 16
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [libc.malloc(size) for _ in range(count)]
        for block in blocks:
            ctypes.memset(block, 1, size)  # touch every page
        for block in blocks:
            libc.free(block)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(faults)
    """
)
PAGES = 16 * (4 << 20) // 4096


def _faults(choice: str, env_extra: dict | None = None) -> int:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", FAULTS, choice], capture_output=True,
                         text=True, check=True, env=env)  # fmt: skip
    return int(out.stdout.strip())


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_keep_reuses_freed_blocks_without_page_faults():
    assert _faults("system") >= PAGES // 2  # trimmed, then touched page by page again
    assert _faults("keep") < PAGES // 50  # the freed blocks are reused


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_users_malloc_variables_are_left_alone():
    # the user's own (default) trim threshold wins: the pages are faulted in every round
    assert _faults("keep", {"MALLOC_TRIM_THRESHOLD_": str(128 << 10)}) >= PAGES // 2


class _Spy:
    calls: list = []

    def __init__(self, *_a) -> None:
        pass

    def mallopt(self, *args) -> int:
        _Spy.calls.append(args)
        return 1


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "jemalloc"),
        ({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}, "tcmalloc"),
        ({"MALLOC_ARENA_MAX": "2"}, "MALLOC_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "GLIBC_TUNABLES"),
    ],
)
def test_a_chosen_allocator_is_named_and_not_touched(monkeypatch, env, expected):
    _Spy.calls = []
    monkeypatch.setattr(allocator.ctypes, "CDLL", _Spy)
    monkeypatch.setattr(allocator.platform, "system", lambda: "Linux")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    for key in list(allocator.os.environ):
        if key.startswith("MALLOC_") or key in ("LD_PRELOAD", "GLIBC_TUNABLES"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    line = allocator.tune_allocator("keep")
    assert expected in line and "left alone" in line and _Spy.calls == []
    assert "--allocator system" in allocator.tune_allocator("system") and _Spy.calls == []


def test_keep_sets_both_thresholds_on_glibc(monkeypatch):
    _Spy.calls = []
    monkeypatch.setattr(allocator.ctypes, "CDLL", _Spy)
    monkeypatch.setattr(allocator.platform, "system", lambda: "Linux")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    for key in list(allocator.os.environ):
        if key.startswith("MALLOC_") or key in ("LD_PRELOAD", "GLIBC_TUNABLES"):
            monkeypatch.delenv(key)
    line = allocator.tune_allocator("keep")
    assert sorted(_Spy.calls) == sorted([(allocator.M_MMAP_THRESHOLD, 32 << 20),
                                         (allocator.M_TRIM_THRESHOLD, 1 << 30)])  # fmt: skip
    assert "keeps freed blocks" in line
    with pytest.raises(ValueError, match="--allocator must be one of keep, system"):
        allocator.tune_allocator("jemalloc")
