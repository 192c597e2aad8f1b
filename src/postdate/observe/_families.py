"""Counter, gauge and histogram families whose updates are cheap, for what a worker counts
once per message (see :mod:`postdate.observe._metrics`).

An update of a prometheus_client child is several Python calls and a lock per number (a
histogram observation takes two locks and about 9,000 instructions), and a worker makes
five of them per message. Here a child is plain numbers behind one lock, and its family
turns them into the samples prometheus_client writes for the same metric, at scrape time:
``_total`` and ``_created`` for a counter; ``_bucket``, ``_count``, ``_sum`` and
``_created`` for a histogram.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

import prometheus_client.metrics
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

C = TypeVar("C")


class CounterChild:
    """One label set of a :class:`CounterFamily`."""

    __slots__ = ("_lock", "_value", "created")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (not negative: the caller's to make sure)."""
        with self._lock:
            self._value += amount

    def get(self) -> float:
        """The count so far."""
        with self._lock:
            return self._value


class GaugeChild:
    """One label set of a :class:`GaugeFamily`."""

    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        """Subtract ``amount``."""
        with self._lock:
            self._value -= amount

    def get(self) -> float:
        """The value now."""
        with self._lock:
            return self._value


class HistogramChild:
    """One label set of a :class:`HistogramFamily`: a count per bucket, and the sum."""

    __slots__ = ("_bounds", "_counts", "_lock", "_sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * len(bounds)
        self._lock = threading.Lock()
        self._sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Count ``amount`` in the first bucket whose upper bound is at least ``amount``
        (a NaN in none, as prometheus_client does), and add it to the sum."""
        index = bisect.bisect_left(self._bounds, amount)
        with self._lock:
            if amount == amount:  # False for a NaN only: it counts in no bucket
                self._counts[index] += 1
            self._sum += amount

    def get(self) -> tuple[list[int], float]:
        """The cumulative count of each bucket (``le``), and the sum."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        return list(itertools.accumulate(counts)), total


class Family(Collector, Generic[C]):
    """A metric with labels: a child per label set, made on first use by ``make_child``,
    and registered in ``registry`` (the default one unless given; None for none)."""

    kind = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        make_child: Callable[[], C],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._make_child = make_child
        self._children: dict[tuple[str, ...], C] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def labels(self, *values: object) -> C:
        """The child of the label set ``values`` (one per label name, made text).

        Raises:
            ValueError: not one value per label name.
        """
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values!r}")
        key = tuple(str(value) for value in values)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._make_child()
        return child

    def children(self) -> list[tuple[tuple[str, ...], C]]:
        """Every label set so far, with its child."""
        with self._lock:
            return list(self._children.items())

    def describe(self) -> Iterator[Metric]:
        """The family without samples: its name, for the registry's collision check."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        """The family with the samples of every child."""
        family = self._family()
        for values, child in self.children():
            self._add(family, values, child)
        yield family

    def _family(self) -> Metric:
        raise NotImplementedError

    def _add(self, family: Metric, values: tuple[str, ...], child: C) -> None:
        raise NotImplementedError


def _created_samples() -> bool:
    """Whether ``_created`` samples are written (prometheus_client's setting:
    ``PROMETHEUS_DISABLE_CREATED_SERIES``, ``disable_created_metrics()``)."""
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


class _PlainFamily(Family[C]):
    """A family whose children take no arguments: one of ``child_type`` per label set."""

    child_type: type[C]

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        super().__init__(name, documentation, labelnames, self.child_type, registry)


class CounterFamily(_PlainFamily[CounterChild]):
    """A counter, written as prometheus_client writes a ``Counter``."""

    child_type = CounterChild

    def _family(self) -> Metric:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, values: tuple[str, ...], child: CounterChild) -> None:
        assert isinstance(family, CounterMetricFamily)
        created = child.created if _created_samples() else None
        family.add_metric(values, child.get(), created=created)


class GaugeFamily(_PlainFamily[GaugeChild]):
    """A gauge, written as prometheus_client writes a ``Gauge``."""

    child_type = GaugeChild

    def _family(self) -> Metric:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, values: tuple[str, ...], child: GaugeChild) -> None:
        assert isinstance(family, GaugeMetricFamily)
        family.add_metric(values, child.get())


class HistogramFamily(Family[HistogramChild]):
    """A histogram, written as prometheus_client writes a ``Histogram`` with the same
    ``buckets`` (upper bounds, ascending; +Inf is added when missing)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        bounds = tuple(float(bound) for bound in buckets)
        if list(bounds) != sorted(bounds):
            raise ValueError(f"{name}: buckets must be in ascending order")
        if not bounds or bounds[-1] != math.inf:
            bounds = (*bounds, math.inf)
        self.bounds = bounds
        self._le = tuple(floatToGoString(bound) for bound in bounds)  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, lambda: HistogramChild(bounds), registry)

    def _family(self) -> Metric:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, values: tuple[str, ...], child: HistogramChild) -> None:
        assert isinstance(family, HistogramMetricFamily)
        cumulative, total = child.get()
        family.add_metric(values, list(zip(self._le, cumulative, strict=True)), total)
        if _created_samples():
            labels = dict(zip(self.labelnames, values, strict=True))
            family.add_sample(f"{self.name}_created", labels, child.created)
