"""glibc's allocator, tuned for an audit's many large, short-lived tensors (applied by the CLI only).

By default glibc serves every allocation above ~128 KiB-32 MiB with a fresh ``mmap`` and returns it to the OS
on free, so every batch of maps, activations and gradients pays page faults and zeroing again. Keeping freed
memory in the heap (no ``mmap`` for large blocks, a trim threshold too high to reach, a 256 MiB top pad) is
what the Makefile's ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... MALLOC_TOP_PAD_=...`` did for ``make``
users; measured on a 2-core machine, adebayo2018 took 36 s with them and 66 s without. The numbers do not
change (the allocator does not touch arithmetic); the resident set stays near its peak instead of shrinking
after each state. A setting the user has already made in the environment is left alone, and nothing happens
outside glibc (``mallopt`` is glibc's).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import List

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_INT_MAX = 2 ** 31 - 1  # mallopt takes an int: the largest trim threshold it can express (2 GiB)

#: (environment variable, mallopt parameter, value): the Makefile's settings
SETTINGS = (("MALLOC_MMAP_MAX_", _M_MMAP_MAX, 0),
            ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, _INT_MAX),
            ("MALLOC_TOP_PAD_", _M_TOP_PAD, 256 * 2 ** 20))


def tune_for_tensors() -> List[str]:
    """Apply :data:`SETTINGS` with ``mallopt`` for those the environment leaves unset; returns what was applied
    (empty off glibc, or where the user set them all)."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return []
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = []
    for env, param, value in SETTINGS:
        if env in os.environ:
            continue
        if mallopt(param, value) == 1:  # 1 on success
            applied.append(env)
    return applied
