"""Just enough of the Prometheus text format and PromQL maths for the benchmarks.

``parse_samples`` keeps only the metric names it is asked for, so a /metrics page
with 100,000 jobs parses in well under a second. ``histogram_quantile`` follows
Prometheus' ``bucketQuantile`` (promql/quantile.go): find the bucket that holds the
rank and interpolate linearly inside it. A quantile is therefore only as precise as
the bucket layout: the figures it yields are *bucket-interpolated*, not exact.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def _unescape(value: str) -> str:
    return value.replace(r"\n", "\n").replace(r"\"", '"').replace(r"\\", "\\")


def parse_samples(text: str, names: Iterable[str]) -> list[Sample]:
    """Samples of the given metric names (exact names, e.g. ``x_bucket``) in ``text``."""
    wanted = frozenset(names)
    samples: list[Sample] = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            if name not in wanted:
                continue
            close = line.rindex("}")
            labels = {k: _unescape(v) for k, v in _LABEL.findall(line[brace + 1 : close])}
            rest = line[close + 1 :].split()
        else:
            name = line[:space]
            if name not in wanted:
                continue
            labels = {}
            rest = line[space + 1 :].split()
        samples.append(Sample(name, labels, float(rest[0])))
    return samples


def sum_samples(samples: Iterable[Sample], name: str, **match: str) -> float:
    """Sum of every sample called ``name`` whose labels include ``match``."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in match.items())
    )


def count_samples(samples: Iterable[Sample], name: str, value: float | None = None) -> int:
    return sum(1 for s in samples if s.name == name and (value is None or s.value == value))


def histogram_buckets(samples: Iterable[Sample], name: str) -> dict[float, float]:
    """Cumulative bucket counts by upper bound, summed over every other label."""
    buckets: dict[float, float] = {}
    for s in samples:
        if s.name != f"{name}_bucket":
            continue
        bound = float(s.labels["le"])  # float() reads "+Inf" too
        buckets[bound] = buckets.get(bound, 0.0) + s.value
    return buckets


def bucket_delta(end: Mapping[float, float], start: Mapping[float, float]) -> dict[float, float]:
    """Per-bucket increase between two scrapes (what ``increase()`` does, no resets)."""
    return {bound: count - start.get(bound, 0.0) for bound, count in end.items()}


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus' histogram_quantile over cumulative ``{upper bound: count}``."""
    if not 0 <= q <= 1:
        return math.inf if q > 1 else -math.inf
    ordered = sorted(buckets.items())
    # Make counts monotonic, as Prometheus does for scrapes that raced an update.
    bounds = [b for b, _ in ordered]
    counts: list[float] = []
    for _, c in ordered:
        counts.append(max(c, counts[-1]) if counts else c)
    if len(ordered) < 2 or not math.isinf(bounds[-1]) or counts[-1] == 0:
        return math.nan
    observations = counts[-1]
    rank = q * observations
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    bucket_start = 0.0
    bucket_end = bounds[b]
    count = counts[b]
    if b > 0:
        bucket_start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return bucket_start + (bucket_end - bucket_start) * (rank / count)


def exact_quantile(q: float, values: list[float]) -> float:
    """Nearest-rank quantile of raw observations (for the driver's own timings)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def self_check() -> None:
    """Known answers; raises AssertionError if the maths above is wrong."""
    page = (
        "# HELP lag_seconds How late runs start.\n"
        "# TYPE lag_seconds histogram\n"
        'lag_seconds_bucket{le="0.001"} 10\n'
        'lag_seconds_bucket{le="0.01"} 20\n'
        'lag_seconds_bucket{le="0.1"} 30\n'
        'lag_seconds_bucket{le="+Inf"} 30\n'
        "lag_seconds_count 30\n"
        'runs_total{module="banner",note="a \\"quoted\\" {x}"} 7\n'
        'runs_total{module="other"} 5\n'
    )
    samples = parse_samples(page, ["lag_seconds_bucket", "runs_total"])
    assert sum_samples(samples, "runs_total", module="banner") == 7
    assert sum_samples(samples, "runs_total") == 12
    assert samples[4].labels["note"] == 'a "quoted" {x}'
    buckets = histogram_buckets(samples, "lag_seconds")
    assert buckets[math.inf] == 30
    # rank 15 lies in (0.001, 0.01], halfway: 0.001 + 0.009 * 5/10
    assert math.isclose(histogram_quantile(0.5, buckets), 0.0055)
    # rank 29.7 lies in (0.01, 0.1]: 0.01 + 0.09 * 9.7/10
    assert math.isclose(histogram_quantile(0.99, buckets), 0.0973)
    # rank 5 in the first bucket interpolates from 0
    assert math.isclose(histogram_quantile(1 / 6, buckets), 0.0005)
    # everything above the last finite bound: answer is that bound
    assert histogram_quantile(0.5, {0.1: 0, 1.0: 0, math.inf: 4}) == 1.0
    assert math.isnan(histogram_quantile(0.5, {0.1: 0, math.inf: 0}))
    start = {0.001: 4.0, 0.01: 4.0, 0.1: 10.0, math.inf: 10.0}
    assert bucket_delta(buckets, start) == {0.001: 6, 0.01: 16, 0.1: 20, math.inf: 20}
    assert exact_quantile(0.5, [3.0, 1.0, 2.0, 4.0]) == 2.0
    assert exact_quantile(0.99, [float(i) for i in range(1, 101)]) == 99.0


if __name__ == "__main__":
    self_check()
    print("promstats self-check passed")
