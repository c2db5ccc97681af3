"""How the embedded log stores a record batch's blob: zstd, with a dictionary per topic.

Events are small JSON documents that repeat each other's keys, browsers and
URLs: compressed one batch at a time without help, a batch of one event (the
commonest commit when traffic is light) barely shrinks. So each topic gets a
zstd dictionary trained from its first records (:data:`TRAIN_RECORDS` of them,
sampled as they are appended; the training runs in a thread of its own, never
in the writer's way). Until then batches are compressed without one.

A stored blob is either a zstd frame (it starts with the zstd magic number,
which as a little-endian int32 is negative, so it is never the first key
length of an uncompressed blob) or the uncompressed framing itself (batches
written before compression, or ones that did not get smaller). A frame names
its dictionary by zstd's dictionary id; dictionaries live in the
``zstd_dictionaries`` table, written (and committed) before any batch uses
them, and are never deleted. Another process appending to the same file uses
the newest dictionary of a topic it finds there when it starts.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence

import zstandard

from .base import Entry

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS zstd_dictionaries (
    id INTEGER PRIMARY KEY,  -- zstd's dictionary id, as written in every frame that uses it
    topic TEXT NOT NULL,
    data BLOB NOT NULL
);
"""

LEVEL = 3
DICT_BYTES = 16 * 1024
TRAIN_RECORDS = 1000  # sampled per topic before its dictionary is trained
_TRAIN_BYTES = 4 * 1024 * 1024  # and no more than this much of them
_MAGIC = b"\x28\xb5\x2f\xfd"


class Codec:
    """Compression for one log: the writer thread compresses, readers (one at a time) decompress.

    ``connect`` opens a new connection to the log's file (for storing a trained dictionary).
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._plain = zstandard.ZstdCompressor(level=LEVEL)
        self._compressors: dict[str, zstandard.ZstdCompressor] = {}  # topic -> with its dictionary
        self._samples: dict[str, list[bytes | bytearray | memoryview]] = {}
        self._sample_bytes: dict[str, int] = {}
        self._training: set[str] = set()  # topics being trained or done: sampling is over
        self._decompressors: dict[int, zstandard.ZstdDecompressor] = {0: zstandard.ZstdDecompressor()}
        self.trainers: list[threading.Thread] = []

    def load(self, conn: sqlite3.Connection) -> None:
        """Use the newest dictionary of each topic already in the file."""
        for topic, data in conn.execute("SELECT topic, data FROM zstd_dictionaries ORDER BY rowid"):
            self._use(topic, zstandard.ZstdCompressionDict(data))
            self._training.add(topic)

    # writing -----------------------------------------------------------------

    def sample(self, topic: str, entries: Sequence[Entry]) -> None:
        """Keep appended records as training samples until the topic has enough (cheap once it has)."""
        if topic in self._training:
            return
        samples = self._samples.setdefault(topic, [])
        size = self._sample_bytes.get(topic, 0)
        for key, value in entries:
            record = value if key is None else key + value
            samples.append(record)
            size += len(record)
        self._sample_bytes[topic] = size
        if len(samples) >= TRAIN_RECORDS or size >= _TRAIN_BYTES:
            self._training.add(topic)
            del self._samples[topic]
            thread = threading.Thread(target=self._train, args=(topic, samples), name=f"tripwire-log-dict-{topic}",
                                      daemon=True)
            self.trainers.append(thread)
            thread.start()

    def _train(self, topic: str, samples: list[bytes | bytearray | memoryview]) -> None:
        try:
            trained = zstandard.train_dictionary(DICT_BYTES, samples, level=LEVEL)
            conn = self._connect()
            try:
                conn.execute("INSERT OR IGNORE INTO zstd_dictionaries VALUES (?, ?, ?)",
                             (trained.dict_id(), topic, trained.as_bytes()))
                (stored,) = conn.execute("SELECT data FROM zstd_dictionaries WHERE id = ?", (trained.dict_id(),)).fetchone()
            finally:
                conn.close()
        except (zstandard.ZstdError, sqlite3.Error) as exc:  # too few distinct samples, a busy or full disk
            logger.warning("event log: no compression dictionary for topic %r (batches are compressed without "
                           "one): %s", topic, exc)
            return
        if stored != trained.as_bytes():  # another dictionary with the same id (a 1 in 2**31 clash)
            logger.warning("event log: compression dictionary id %d of topic %r is taken; not using it",
                           trained.dict_id(), topic)
            return
        self._use(topic, trained)
        logger.debug("event log: topic %r compresses with dictionary %d from %d records", topic,
                     trained.dict_id(), len(samples))

    def _use(self, topic: str, dictionary: zstandard.ZstdCompressionDict) -> None:
        self._compressors[topic] = zstandard.ZstdCompressor(level=LEVEL, dict_data=dictionary)

    def compress(self, topic: str, blob: bytes) -> bytes:
        """The blob to store for a batch of ``topic`` (writer thread only)."""
        packed = self._compressors.get(topic, self._plain).compress(blob)
        return packed if len(packed) < len(blob) else blob

    # reading -----------------------------------------------------------------

    def decompress(self, stored: bytes, conn: sqlite3.Connection) -> bytes:
        """The framing of a stored blob; ``conn`` finds dictionaries not seen yet (one reader at a time)."""
        if stored[:4] != _MAGIC:
            return stored
        dict_id = zstandard.get_frame_parameters(stored).dict_id
        decompressor = self._decompressors.get(dict_id)
        if decompressor is None:
            row = conn.execute("SELECT data FROM zstd_dictionaries WHERE id = ?", (dict_id,)).fetchone()
            if row is None:
                raise ValueError(f"record batch compressed with dictionary {dict_id}, which the log does not hold")
            decompressor = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(row[0]))
            self._decompressors[dict_id] = decompressor
        return decompressor.decompress(stored)
