"""The OTLP protobuf encoding of the bridge's spans, written by hand (``ExportTraceServiceRequest``).

The OpenTelemetry SDK's encoder takes about 80 µs a span on the 2-core machine of ``bench/telemetry.py`` (it builds
each attribute as a message through Python helpers); the export thread spends that time holding the interpreter lock
beside the calls. This writes the same wire format directly, reusing the bytes of attributes that repeat (the method,
the server, the tool, the outcome), at a few µs a span. The messages and field numbers are those of
``opentelemetry/proto/trace/v1/trace.proto`` and ``common/v1/common.proto``; the tests decode what it writes with
``opentelemetry-proto``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

_CACHE_LIMIT = 4096
_kv_cache: dict[tuple[int, str, type, Any], bytes] = {}
UNIQUE_KEYS = frozenset({"jsonrpc.request.id"})
"""Attributes whose value differs on every span: encoded each time, never kept (they would only churn the cache)."""
_SMALL = [bytes((n,)) for n in range(0x80)]
_U64 = struct.Struct("<Q")


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (a string, bytes or an embedded message)."""
    return _tag(field, 2) + _varint(len(payload)) + payload


def _fixed64(field: int, value: int) -> bytes:
    return _tag(field, 1) + _U64.pack(value)


def _uint(field: int, value: int) -> bytes:
    return _tag(field, 0) + _varint(value)


def _any_value(value: Any) -> bytes:
    """``AnyValue``: string 1, bool 2, int 3 (int64), double 4, array 5."""
    if isinstance(value, bool):
        return _uint(2, int(value))
    if isinstance(value, int):
        return _uint(3, value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return _tag(4, 1) + struct.pack("<d", value)
    if isinstance(value, list | tuple):
        return _ld(5, b"".join(_ld(1, _any_value(v)) for v in value))
    return _ld(1, str(value).encode("utf-8", "replace"))


def _key_value(field: int, key: str, value: Any) -> bytes:
    return _ld(field, _ld(1, key.encode("utf-8", "replace")) + _ld(2, _any_value(value)))


def key_values(field: int, attributes: Mapping[str, Any]) -> bytes:
    """Each attribute as a ``KeyValue`` in ``field`` of the enclosing message (each one's bytes kept for the next
    span with the same attribute: the method, the server, the tool, the outcome repeat)."""
    parts = []
    cache = _kv_cache
    for key, value in attributes.items():
        if value is None:
            continue
        if key in UNIQUE_KEYS:
            parts.append(_key_value(field, key, value))
            continue
        cache_key = (field, key, type(value), value if not isinstance(value, list) else tuple(value))
        encoded = cache.get(cache_key)
        if encoded is None:
            encoded = _key_value(field, key, value)
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[cache_key] = encoded
        parts.append(encoded)
    return b"".join(parts)


_TRACE_ID = b"\x0a\x10"  # field 1, 16 bytes
_SPAN_ID = b"\x12\x08"  # field 2, 8 bytes
_PARENT_ID = b"\x22\x08"  # field 4, 8 bytes
_KIND = b"\x30"  # field 6, varint
_START = b"\x39"  # field 7, fixed64
_END = b"\x41"  # field 8, fixed64
_ERROR = _ld(15, _uint(3, 2))  # Status { code: STATUS_CODE_ERROR }


def span(
    *,
    trace_id: int,
    span_id: int,
    parent_id: int,
    trace_state: str,
    name: str,
    kind: int,
    start: int,
    end: int,
    attributes: Mapping[str, Any] | bytes,
    events: Iterable[tuple[int, str, Mapping[str, Any]]],
    error: bool,
) -> bytes:
    """One ``Span`` (``kind``: the protobuf's, 1 internal, 2 server, 3 client; ``attributes``: or their encoding,
    :func:`key_values` in field 9)."""
    parts = [_TRACE_ID, trace_id.to_bytes(16, "big"), _SPAN_ID, span_id.to_bytes(8, "big")]
    if trace_state:
        parts.append(_ld(3, trace_state.encode("ascii", "replace")))
    if parent_id:
        parts += (_PARENT_ID, parent_id.to_bytes(8, "big"))
    parts += (
        _ld(5, name.encode("utf-8", "replace")),
        _KIND,
        _SMALL[kind],
        _START,
        _U64.pack(start),
        _END,
        _U64.pack(end),
        attributes if isinstance(attributes, bytes) else key_values(9, attributes),
    )
    for at, event_name, event_attributes in events:
        event = _fixed64(1, at) + _ld(2, event_name.encode("utf-8", "replace")) + key_values(3, event_attributes)
        parts.append(_ld(11, event))
    if error:
        parts.append(_ERROR)
    return b"".join(parts)


def request(resource: Mapping[str, Any], scope: tuple[str, str], spans: Iterable[bytes]) -> bytes:
    """An ``ExportTraceServiceRequest`` of one resource and one instrumentation scope."""
    scope_message = _ld(1, scope[0].encode()) + _ld(2, scope[1].encode())
    scope_spans = _ld(1, scope_message) + b"".join(_ld(2, s) for s in spans)
    resource_spans = _ld(1, key_values(1, resource)) + _ld(2, scope_spans)
    return _ld(1, resource_spans)


# ---------------------------------------------------------------------------------------------------------- metrics

HISTOGRAM_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""Seconds: the boundaries OpenTelemetry's semantic conventions advise for the MCP operation durations."""
_CUMULATIVE = 2


def _double(field: int, value: float) -> bytes:
    return _tag(field, 1) + struct.pack("<d", value)


def _number_point(attributes: Mapping[str, Any], start: int, now: int, value: float | int) -> bytes:
    """``NumberDataPoint``: attributes 7, start 2, time 3, as_double 4 or as_int 6 (sfixed64)."""
    number = _tag(6, 1) + struct.pack("<q", value) if isinstance(value, int) else _double(4, value)
    return key_values(7, attributes) + _fixed64(2, start) + _fixed64(3, now) + number


def gauge(points: Iterable[tuple[Mapping[str, Any], float | int]], start: int, now: int) -> bytes:
    """A ``Gauge`` (field 5 of ``Metric``): each point's last value."""
    return _ld(5, b"".join(_ld(1, _number_point(a, start, now, v)) for a, v in points))


def counter(points: Iterable[tuple[Mapping[str, Any], float | int]], start: int, now: int) -> bytes:
    """A monotonic cumulative ``Sum`` (field 7 of ``Metric``)."""
    body = b"".join(_ld(1, _number_point(a, start, now, v)) for a, v in points)
    return _ld(7, body + _uint(2, _CUMULATIVE) + _uint(3, 1))


def histogram(points: Iterable[tuple[Mapping[str, Any], Any]], start: int, now: int) -> bytes:
    """A cumulative ``Histogram`` (field 9 of ``Metric``); each point's state: count, sum, min, max, bucket counts."""
    bounds = b"".join(struct.pack("<d", b) for b in HISTOGRAM_BOUNDS)
    body = []
    for attributes, (count, total, low, high, buckets) in points:
        point = (
            key_values(9, attributes)
            + _fixed64(2, start)
            + _fixed64(3, now)
            + _tag(4, 1)
            + struct.pack("<Q", count)
            + _double(5, total)
            + _ld(6, b"".join(struct.pack("<Q", n) for n in buckets))
            + _ld(7, bounds)
            + _double(11, low)
            + _double(12, high)
        )
        body.append(_ld(1, point))
    return _ld(9, b"".join(body) + _uint(2, _CUMULATIVE))


def metric(name: str, unit: str, description: str, data: bytes) -> bytes:
    """A ``Metric``: name 1, description 2, unit 3, then its data (gauge 5, sum 7, histogram 9)."""
    return _ld(1, name.encode()) + _ld(2, description.encode()) + _ld(3, unit.encode()) + data


def metrics_request(resource: Mapping[str, Any], scope: tuple[str, str], metrics: Iterable[bytes]) -> bytes:
    """An ``ExportMetricsServiceRequest`` of one resource and one instrumentation scope."""
    scope_message = _ld(1, scope[0].encode()) + _ld(2, scope[1].encode())
    scope_metrics = _ld(1, scope_message) + b"".join(_ld(2, m) for m in metrics)
    resource_metrics = _ld(1, key_values(1, resource)) + _ld(2, scope_metrics)
    return _ld(1, resource_metrics)
