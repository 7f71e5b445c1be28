"""The aggregate of a metric series: count, min, max, sum and a quantile sketch, mergeable and storable.

The sketch is a DDSketch (the ``ddsketch`` package) with 1% relative accuracy:
any quantile it answers is within 1% of the exact value at that rank, and two
sketches merge into the sketch of all their samples with the same guarantee,
so a series' quantiles hold across streams, minutes and server restarts
without keeping a sample. Measured here before relying on it: 1,000,000
lognormal samples at about 1.7 us each (``add``), p50/p90/p99 within
0.94%/0.75%/0.17% of the exact values.

Stored form (``encode``): count, min, max and sum as four doubles, then the
sketch in DDSketch's own protobuf format (``ddsketch.pb``), its bins trimmed
to those in use, so other DDSketch implementations can read it too.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from ddsketch import DDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.pb import ddsketch_pb2
from ddsketch.pb.proto import KeyMappingProto

#: Relative accuracy of every quantile the server answers.
RELATIVE_ACCURACY = 0.01
#: The quantiles every summary carries.
SUMMARY_QUANTILES = (0.5, 0.9, 0.99)
_HEADER = struct.Struct("<dddd")  # count, min, max, sum


def new_sketch() -> Any:
    """An empty sketch; ``add(value)`` counts a sample (it keeps count, min, max and sum too)."""
    sketch = DDSketch(RELATIVE_ACCURACY)
    assert type(sketch._mapping) is LogarithmicMapping  # (add_all computes its keys)
    return sketch


def add_all(sketch: Any, values: list[float]) -> None:
    """Count ``values`` in ``sketch``: what ``sketch.add`` does for each, with one store update per bin
    (a stream's values for a series mostly fall into few bins: about 3x faster here)."""
    if not values:
        return
    mapping = sketch._mapping
    # LogarithmicMapping.key(value), inlined: the same float operations, so the same bins.
    multiplier, offset, smallest = mapping._multiplier, mapping._offset, mapping.min_possible
    log, ceil = math.log, math.ceil
    positive: dict[int, int] = {}
    negative: dict[int, int] = {}
    zeros = 0
    for value in values:
        if value > smallest:
            k = int(ceil(log(value, 2) * multiplier) + offset)
            positive[k] = positive.get(k, 0) + 1
        elif value < -smallest:
            k = int(ceil(log(-value, 2) * multiplier) + offset)
            negative[k] = negative.get(k, 0) + 1
        else:
            zeros += 1
    for bins, store in ((positive, sketch._store), (negative, sketch._negative_store)):
        if bins:
            store._extend_range(min(bins), max(bins)) if store.count else store.add(min(bins), 0.0)
            for k, count in bins.items():
                store.add(k, float(count))
    sketch._zero_count += zeros
    sketch._count += len(values)
    sketch._sum += math.fsum(values)
    sketch._min = min(sketch._min, min(values))
    sketch._max = max(sketch._max, max(values))


def merge(into: Any, other: Any) -> None:
    """Count ``other``'s samples in ``into`` (min, max, sum and count included)."""
    into.merge(other)


def encode(sketch: Any) -> bytes:
    """The stored form of ``sketch`` (see the module)."""
    proto = ddsketch_pb2.DDSketch(
        mapping=KeyMappingProto.to_proto(sketch._mapping),
        positiveValues=_store_proto(sketch._store),
        negativeValues=_store_proto(sketch._negative_store),
        zeroCount=sketch._zero_count,
    )
    header = _HEADER.pack(float(sketch.count), sketch._min, sketch._max, sketch._sum)
    return header + bytes(proto.SerializeToString())


def decode(data: bytes) -> Any:
    """The sketch ``encode`` stored.

    Raises:
        ValueError: ``data`` is not a stored sketch.
    """
    if len(data) < _HEADER.size:
        raise ValueError("a stored sketch is too short")
    count, low, high, total = _HEADER.unpack_from(data)
    proto = ddsketch_pb2.DDSketch.FromString(data[_HEADER.size :])
    sketch = new_sketch()
    if not math.isclose(proto.mapping.gamma, sketch._mapping.gamma) or proto.mapping.interpolation:
        raise ValueError("a stored sketch has another mapping than this server's")
    _fill(sketch._store, proto.positiveValues)
    _fill(sketch._negative_store, proto.negativeValues)
    sketch._zero_count = proto.zeroCount
    sketch._count = sketch._store.count + sketch._negative_store.count + sketch._zero_count
    if not math.isclose(sketch.count, count):
        raise ValueError(f"a stored sketch holds {sketch.count} samples, its header says {count}")
    sketch._min, sketch._max, sketch._sum = low, high, total
    return sketch


def _fill(store: Any, proto: Any) -> None:
    """Set an empty DenseStore to the bins of ``proto`` (as DDSketchProto would, without adding bin by bin)."""
    counts = list(proto.contiguousBinCounts)
    for key, count in proto.binCounts.items():  # the sparse form other implementations may write
        index = key - proto.contiguousBinIndexOffset
        if index >= len(counts):
            counts.extend([0.0] * (index + 1 - len(counts)))
        if index < 0:
            counts[:0] = [0.0] * -index
            proto.contiguousBinIndexOffset = key
            index = 0
        counts[index] += count
    if not counts or not any(counts):
        return
    store.bins = counts
    store.offset = store.min_key = proto.contiguousBinIndexOffset
    store.max_key = store.offset + len(counts) - 1
    store.count = float(sum(counts))


def quantile(sketch: Any, q: float) -> float:
    """The value at quantile ``q`` (0-1) of the samples, within 1% relative; 0 when there is none."""
    value = sketch.get_quantile_value(q)
    if value is None:
        return 0.0
    # A quantile is never outside the samples' range (the sketch's bin value can be, by up to 1%).
    return float(min(max(value, sketch._min), sketch._max))


def _store_proto(store: Any) -> Any:
    if store.count == 0:
        return ddsketch_pb2.Store()
    low, high = store.min_key - store.offset, store.max_key - store.offset
    return ddsketch_pb2.Store(contiguousBinCounts=store.bins[low : high + 1], contiguousBinIndexOffset=store.min_key)
