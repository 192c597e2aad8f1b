"""postdate.observe._families writes the samples prometheus_client writes for the same metric, and
counts what its children are given."""

from __future__ import annotations

import math
import re
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from postdate.observe._families import CounterFamily, GaugeFamily, HistogramFamily

BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
OBSERVED = (0.0, 0.003, 0.01, 0.0100001, 0.7, 2, 59.9, 60, 61, 1e9, math.inf, -1.0)


def exposition(registry: CollectorRegistry) -> str:
    """The text format, each ``_created`` value replaced (they are clock readings)."""
    text = generate_latest(registry).decode()
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", text)


def test_a_counter_family_is_written_as_a_prometheus_counter() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Counter("m", "Doc", ["queue", "outcome"], registry=theirs)
    family = CounterFamily("m", "Doc", ["queue", "outcome"], registry=ours)
    for labels, amount in ((("a", "handled"), 1.0), (("a", "handled"), 2.5), (("b", "x"), 1.0)):
        reference.labels(*labels).inc(amount)
        family.labels(*labels).inc(amount)
    assert exposition(ours) == exposition(theirs)
    assert family.labels("a", "handled").get() == 3.5


def test_a_gauge_family_is_written_as_a_prometheus_gauge() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Gauge("g", "Doc", ["queue"], registry=theirs)
    family = GaugeFamily("g", "Doc", ["queue"], registry=ours)
    for child in (reference.labels("q"), family.labels("q")):
        child.inc()
        child.inc(3)
        child.dec()
    reference.labels("empty")
    family.labels("empty")
    assert exposition(ours) == exposition(theirs)
    assert family.labels("q").get() == 3


@pytest.mark.parametrize("buckets", [BUCKETS, Histogram.DEFAULT_BUCKETS])
def test_a_histogram_family_is_written_as_a_prometheus_histogram(
    buckets: tuple[float, ...],
) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h_seconds", "Doc", ["queue"], buckets=buckets, registry=theirs)
    family = HistogramFamily("h_seconds", "Doc", ["queue"], buckets=buckets, registry=ours)
    for value in OBSERVED:
        reference.labels("q").observe(value)
        family.labels("q").observe(value)
    reference.labels("other").observe(0.2)
    family.labels("other").observe(0.2)
    assert exposition(ours) == exposition(theirs)


def test_a_nan_is_counted_in_no_bucket_and_makes_the_sum_nan() -> None:
    family = HistogramFamily("n", "Doc", ["queue"], buckets=(1.0,), registry=None)
    family.labels("q").observe(math.nan)
    cumulative, total = family.labels("q").get()
    assert cumulative == [0, 0]
    assert math.isnan(total)


def test_labels_take_one_value_per_name_and_keep_their_child() -> None:
    family = CounterFamily("c", "Doc", ["queue", "type"], registry=None)
    assert family.labels("q", "T") is family.labels("q", "T")
    with pytest.raises(ValueError, match="takes labels"):
        family.labels("q")


def test_updates_from_many_threads_are_all_counted() -> None:
    counter = CounterFamily("t", "Doc", ["queue"], registry=None).labels("q")
    histogram = HistogramFamily("th", "Doc", ["queue"], buckets=(1.0,), registry=None).labels("q")

    def work() -> None:
        for _ in range(20_000):
            counter.inc()
            histogram.observe(0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.get() == 80_000
    assert histogram.get() == ([80_000, 80_000], 40_000.0)


def test_a_family_whose_name_is_taken_is_refused() -> None:
    registry = CollectorRegistry()
    Counter("dup", "Doc", registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        CounterFamily("dup", "Doc", [], registry=registry)
