"""What the lab test modules share: waiting, and one lab per module (only one may exist per machine)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from shoal.lab.lab import Lab, down, lab_exists


def wait_for(predicate, timeout: float = 30, what: str = "condition", interval: float = 0.2):
    """Poll ``predicate`` until it returns something true (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@contextmanager
def module_lab(**up: object) -> Iterator[Lab]:
    """``Lab.up(**up)`` for a test module, always torn down; fails (never skips) when it cannot run."""
    if os.geteuid() != 0:
        pytest.fail("the lab needs root", pytrace=False)
    if lab_exists():
        pytest.fail("a lab already exists on this machine; `shoal lab down` removes it", pytrace=False)
    the_lab = Lab.up(out=lambda m: print(m, file=sys.stderr), **up)  # type: ignore[arg-type]
    try:
        yield the_lab
    finally:
        down(out=lambda m: print(m, file=sys.stderr))
