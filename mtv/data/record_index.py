"""Where every record of a set of TFRecord files lies: (file, byte offset, length), for random access in-graph.

A TFRecord file is a run of records, each `uint64 length (little endian) | uint32 masked crc32c of the
length | data | uint32 masked crc32c of the data`. `build_index` reads only the 12-byte headers and seeks
past the data, so indexing costs one small read per record, not a pass over the payload. Record `i` is
then read in a tf.data graph by `read_record(index, i)`: a `FixedLengthRecordDataset` of one record whose
header and footer are the bytes before and after it.

A header whose length checksum is wrong, or a record running past the end of its file (a truncated
copy), ends that file's index there: the bytes after it cannot be trusted to start a record. Each such
cut, and each empty record, is reported by name (`RecordIndex.skipped`). The data checksum is not
verified (that would mean reading every payload up front); a damaged payload fails to parse or decode
in the pipeline and is skipped there.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from mtv.errors import DataError

HEADER_BYTES = 12  # uint64 length + uint32 masked crc of the length
FOOTER_BYTES = 4  # uint32 masked crc of the data


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C (Castagnoli) of `data`."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class RecordIndex:
    """Every readable record of `files`: `file[i]` (into files), `offset[i]` (of its header), `length[i]`."""

    files: tuple[str, ...]
    sizes: np.ndarray  # int64 [F] file sizes in bytes
    file: np.ndarray  # int32 [N]
    offset: np.ndarray  # int64 [N]
    length: np.ndarray  # int64 [N]
    skipped: tuple[str, ...] = ()  # named reasons for the cuts and empty records left out

    def __len__(self) -> int:
        return int(self.length.shape[0])

    def locate(self, i: int) -> tuple[str, int, int]:
        """(file, header offset, data length) of record `i`."""
        return self.files[int(self.file[i])], int(self.offset[i]), int(self.length[i])

    def describe(self, i: int) -> str:
        """`'<file>' record <n> (byte <offset>)`, n counted from 0 within its file."""
        f = int(self.file[i])
        n = int(np.searchsorted(self.file, f, side="left"))
        return f"'{self.files[f]}' record {i - n} (byte {int(self.offset[i])})"

    def read(self, i: int) -> bytes:
        """The data of record `i`, read on the host (for diagnosing a record the pipeline skipped)."""
        path, offset, length = self.locate(i)
        with open(path, "rb") as f:
            f.seek(offset + HEADER_BYTES)
            return f.read(length)


def _index_file(path: str, size: int) -> tuple[list[int], list[int], list[str]]:
    offsets, lengths, skipped = [], [], []
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            header = f.read(HEADER_BYTES)
            where = f"'{path}' is corrupt after record {len(offsets)}"
            if len(header) < HEADER_BYTES:
                skipped.append(f"{where}: {size - pos} trailing bytes at byte {pos} are shorter than a record "
                               f"header ({HEADER_BYTES} bytes, truncated file); the rest of it is skipped")
                break
            length, crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != crc:
                skipped.append(f"{where}: the length header at byte {pos} fails its checksum; the rest of it "
                               "is skipped")
                break
            end = pos + HEADER_BYTES + length + FOOTER_BYTES
            if end > size:
                skipped.append(f"{where}: the record at byte {pos} claims {length} bytes but the file ends at "
                               f"byte {size} (truncated file); the rest of it is skipped")
                break
            if length == 0:
                skipped.append(f"'{path}' record {len(offsets) + len(skipped)} (byte {pos}) is empty")
            else:
                offsets.append(pos)
                lengths.append(length)
            pos = end
            f.seek(pos)
    return offsets, lengths, skipped


def build_index(files: Sequence[str]) -> RecordIndex:
    """Indexes the records of `files` (in order) from their headers; a missing file is a DataError."""
    sizes, file_ids, offsets, lengths, skipped = [], [], [], [], []
    for i, path in enumerate(files):
        try:
            size = os.path.getsize(path)
            o, n, s = _index_file(path, size)
        except OSError as e:
            raise DataError(f"cannot index TFRecord file '{path}': {e.strerror or e}") from e
        sizes.append(size)
        file_ids += [i] * len(o)
        offsets += o
        lengths += n
        skipped += s
    return RecordIndex(tuple(str(f) for f in files), np.asarray(sizes, np.int64), np.asarray(file_ids, np.int32),
                       np.asarray(offsets, np.int64), np.asarray(lengths, np.int64), tuple(skipped))


class GraphIndex:
    """The index as constant tensors, and the in-graph read of one record."""

    def __init__(self, index: RecordIndex):
        self.size = len(index)
        self._files = tf.constant(index.files if index.files else ("",), tf.string)
        self._sizes = tf.constant(index.sizes if len(index.sizes) else np.zeros(1, np.int64), tf.int64)
        self._file = tf.constant(index.file, tf.int32)
        self._offset = tf.constant(index.offset, tf.int64)
        self._length = tf.constant(index.length, tf.int64)

    def read(self, i: tf.Tensor) -> tf.data.Dataset:
        """A dataset of the one record `i` (its data bytes)."""
        f = tf.gather(self._file, i)
        offset, length = tf.gather(self._offset, i), tf.gather(self._length, i)
        header = offset + HEADER_BYTES
        footer = tf.gather(self._sizes, f) - header - length
        return tf.data.FixedLengthRecordDataset(tf.gather(self._files, f), record_bytes=length, header_bytes=header,
                                                footer_bytes=footer, buffer_size=length)
