"""The framing of the embedded log's record batches.

A record batch holds ``n`` records: ``n`` pairs of little-endian int32 (key
length, -1 for no key; value length), then each record's key and value bytes.
Appends are framed on the event loop in two parts (:func:`encode_parts`) so
the writer can merge the appends of one group commit into one batch per
partition by joining them (:func:`join`). What is stored is this framing
compressed (:mod:`tripwire.log.sqlite_codec`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from .base import Entry
from .partition import partition_for

# One partition's share of an append, framed in two parts (see encode_parts):
# (partition, record count, the int32 length pairs, the key and value bytes).
Part = tuple[int, int, bytes, bytes]

# A huge append is stored as several record batches of about this size, so a read
# from an offset never has to load much more than it returns.
BATCH_BYTES = 1 << 20

_PAIR = struct.Struct("<2i")


def encode_parts(items: Sequence[Entry]) -> tuple[bytes, bytes]:
    """:func:`encode_batch` in its two parts: the length pairs, then the bytes.

    The parts of consecutive framings concatenate into one valid blob
    (``b"".join(heads) + b"".join(datas)``), which is how the writer merges the
    appends of one transaction into one record batch per partition.
    """
    if len(items) == 1:
        key, value = items[0]
        if key is None:
            return _PAIR.pack(-1, len(value)), value
        return _PAIR.pack(len(key), len(value)), key + value
    lengths: list[int] = []
    parts: list[bytes] = []
    for key, value in items:
        if key is None:
            lengths += (-1, len(value))
        else:
            lengths += (len(key), len(value))
            parts.append(key)
        parts.append(value)
    return struct.pack(f"<{len(lengths)}i", *lengths), b"".join(parts)


def encode_batch(items: Sequence[Entry]) -> bytes:
    """Frame records as one blob: (key length | -1, value length) int32 pairs, then the bytes."""
    head, data = encode_parts(items)
    return head + data


def decode_batch(data: bytes, count: int, start: int = 0, stop: int | None = None) -> list[tuple[bytes | None, bytes]]:
    """The (key, value) pairs ``start:stop`` of a blob made by :func:`encode_batch`."""
    lengths = struct.unpack_from(f"<{2 * count}i", data)
    total = 8 * count + sum(length for length in lengths if length > 0)
    if total != len(data):
        raise ValueError(f"record batch of {count} records holds {len(data)} bytes, not {total}")
    stop = count if stop is None else min(stop, count)
    pos = 8 * count + sum(length for length in lengths[: 2 * start] if length > 0)
    view = memoryview(data)
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(2 * start, 2 * stop, 2):
        klen, vlen = lengths[i], lengths[i + 1]
        if klen < 0:
            key = None
        else:
            key = bytes(view[pos : pos + klen])
            pos += klen
        out.append((key, bytes(view[pos : pos + vlen])))
        pos += vlen
    return out


def frame(entries: Sequence[Entry], partitions: int) -> list[Part]:
    """An append's records framed per partition (their key's), each run of about :data:`BATCH_BYTES` a part."""
    if len(entries) == 1:  # a single event: the collector's commonest request
        head, data = encode_parts(entries)
        return [(partition_for(entries[0][0], partitions), 1, head, data)]
    by_partition: dict[int, list[Entry]] = {}
    for entry in entries:
        by_partition.setdefault(partition_for(entry[0], partitions), []).append(entry)
    parts: list[Part] = []
    for partition, items in by_partition.items():
        for chunk in _chunks(items):
            parts.append((partition, len(chunk), *encode_parts(chunk)))
    return parts


def _chunks(items: list[Entry]) -> list[list[Entry]]:
    """``items`` in runs of about :data:`BATCH_BYTES` (one run unless they are bigger)."""
    size = 0
    for _, value in items:
        size += len(value)
    if size <= BATCH_BYTES:
        return [items]
    out: list[list[Entry]] = [[]]
    size = 0
    for item in items:
        if size >= BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(item)
        size += len(item[1]) + (len(item[0]) if item[0] is not None else 0)
    return out


def join(pieces: list[Part]) -> bytes:
    """One framing of the records of several parts of one partition, in order."""
    if len(pieces) == 1:
        return pieces[0][2] + pieces[0][3]
    return b"".join([p[2] for p in pieces] + [p[3] for p in pieces])


def fits_one_batch(pieces: list[Part]) -> bool:
    """Whether a partition's parts of one commit fit one record batch."""
    if len(pieces) == 1:
        return True
    size = 0
    for piece in pieces:
        size += len(piece[3])
    return size <= BATCH_BYTES
