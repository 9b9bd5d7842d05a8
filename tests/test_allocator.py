"""The CLI's allocator tuning (sanitycheck.allocator): applied through glibc's mallopt, never over a setting the
user made in the environment, and a no-op where there is no glibc."""

import sys

import pytest

from sanitycheck import allocator

GLIBC = sys.platform.startswith("linux")


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere the tuning does nothing")
def test_unset_settings_are_applied_and_user_settings_left_alone(monkeypatch):
    for env, _, _ in allocator.SETTINGS:
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("MALLOC_TOP_PAD_", "1048576")  # the user's own choice
    applied = allocator.tune_for_tensors()
    assert applied == ["MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"]


def test_nothing_is_applied_off_linux(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.tune_for_tensors() == []


def test_a_libc_without_mallopt_is_a_no_op(monkeypatch):
    class NoMallopt:
        def __init__(self, *a, **k):
            pass

    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator.ctypes, "CDLL", NoMallopt)
    assert allocator.tune_for_tensors() == []
