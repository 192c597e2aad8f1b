"""A worker process's garbage collector settings (postdate.consume._heap)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from postdate.consume import _heap as heap


@pytest.fixture
def collector_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("collector_restored")
def test_a_worker_process_freezes_start_up_and_collects_young_objects_less_often() -> None:
    gc.unfreeze()
    heap.tune_for_worker()
    assert gc.get_threshold() == heap.WORKER_GC_THRESHOLDS
    assert gc.get_freeze_count() > 0  # this process's modules, out of every scan
    assert heap.WORKER_GC_THRESHOLDS[0] > 700  # CPython's default young threshold
