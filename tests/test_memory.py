"""Freed memory handed back between stages (glibc's malloc_trim)."""

import platform

import pytest

from territoria import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_free_memory_trims_on_glibc():
    assert memory.release_free_memory() is True


def test_release_free_memory_is_a_no_op_without_malloc_trim(monkeypatch):
    monkeypatch.setattr(memory, "_libc", lambda: None)
    assert memory.release_free_memory() is False
