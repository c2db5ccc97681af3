"""Key to partition, the same way Kafka's default partitioner does it."""

from __future__ import annotations

import functools

from aiokafka.partitioner import murmur2


@functools.lru_cache(maxsize=65536)
def _hash(key: bytes) -> int:
    h: int = murmur2(key)  # aiokafka's partitioner is untyped
    return h & 0x7FFFFFFF


def partition_for(key: bytes | None, count: int) -> int:
    """murmur2 of the key modulo ``count``, as the Java and aiokafka clients do.

    Keyless records go to partition 0 so the choice is deterministic.
    """
    if key is None:
        return 0
    return _hash(key) % count
