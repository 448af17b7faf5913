"""Streaming TFRecord shard writer: records go to disk as they come, memory stays constant.

Two ways to cut shards (`ShardWriter`):

* a shard COUNT (`num_shards=N`): shards are contiguous and balanced exactly as
  `np.linspace(0, n, N + 1)` cuts n records (shard i holds records bounds[i]:bounds[i+1]), so
  reading the shards in name order gives the records in the order written. When n is not known
  up front and N > 1, records are first appended to one hidden spool file beside the shards,
  then copied into the N shards once n is known (the spool is removed): disk holds the corpus
  twice for a moment, memory holds one record.
* a target shard SIZE (`shard_size_mb=S`): one pass, no spool. A record starts a new shard
  when adding it would take the current shard past S MiB of TFRecord bytes (payload + 16
  framing bytes per record); a shard always holds at least one record, so one record larger
  than S is a shard of its own. The shard count is known at the end, when the shards get
  their `-SSSSS-of-NNNNN` names.

Shards are written under hidden temp names and renamed when complete, so an interrupted run
never leaves a shard that a `prefix-*` glob would read; `abort()` removes the temp files.
"""

from __future__ import annotations

import logging
import os
import uuid

import numpy as np
import tensorflow as tf

from slm_jax.data.corpus.schema import SHARD_SUFFIX

logger = logging.getLogger(__name__)

TFRECORD_FRAMING_BYTES = 16  # uint64 length + uint32 length crc + uint32 data crc per record
MIB = 1 << 20


def shard_path(out_dir: str, prefix: str, index: int, num_shards: int) -> str:
    return os.path.join(out_dir, f"{prefix}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}")


def check_no_foreign_shards(out_dir: str, prefix: str, paths: list[str]) -> None:
    """A stale shard set with another shard count would be read twice by `prefix-*` globs."""
    existing = tf.io.gfile.glob(os.path.join(out_dir, f"{prefix}-*-of-*{SHARD_SUFFIX}"))
    foreign = sorted(set(existing) - set(paths))
    if foreign:
        raise FileExistsError(
            f"{out_dir}: shards of another shard count exist for prefix {prefix!r} (e.g. {foreign[0]}); "
            "remove them or use another prefix"
        )


class ShardWriter:
    """Writes serialized records to `out_dir/prefix-SSSSS-of-NNNNN.tfrecord` as they come.

    Give exactly one of `num_shards` (>= 1) or `shard_size_mb` (> 0). `total`: the number of
    records that will be written, when known (no spool is needed then). Use `write(bytes)` per
    record, then `close()` -> the shard paths, or `abort()` on failure (also done by `with`
    on an exception). ValueError on bad settings; FileExistsError when shards of another
    count exist for the prefix (checked before writing with a count, at `close` with a size);
    ValueError from `close` when `total` was given and a different number was written.
    """

    def __init__(self, out_dir: str, prefix: str, *, num_shards: int | None = None,
                 shard_size_mb: float | None = None, total: int | None = None):
        if (num_shards is None) == (shard_size_mb is None):
            raise ValueError(f"{out_dir}/{prefix}: give exactly one of num_shards={num_shards!r} and "
                             f"shard_size_mb={shard_size_mb!r}")
        if num_shards is not None and num_shards < 1:
            raise ValueError(f"{out_dir}/{prefix}: num_shards must be >= 1, got {num_shards}")
        if shard_size_mb is not None and not shard_size_mb > 0:
            raise ValueError(f"{out_dir}/{prefix}: shard_size_mb must be > 0, got {shard_size_mb}")
        self.out_dir, self.prefix, self.num_shards, self.total = out_dir, prefix, num_shards, total
        self.target_bytes = None if shard_size_mb is None else shard_size_mb * MIB
        self.count = 0
        self._token = uuid.uuid4().hex
        self._temps: list[str] = []  # complete or open temp shards (size mode, or count mode without a spool)
        self._writer = None
        self._shard_bytes = 0
        self._spool = None
        tf.io.gfile.makedirs(out_dir)
        if num_shards is not None:
            check_no_foreign_shards(out_dir, prefix, self._final_paths(num_shards))
            if num_shards > 1 and total is None:
                self._spool = self._temp_name("spool")
                self._writer = tf.io.TFRecordWriter(self._spool)
            elif num_shards == 1:
                self._open_next()
            else:
                self._bounds = np.linspace(0, total, num_shards + 1).astype(int)
                self._open_next()

    # --- naming ---------------------------------------------------------------------------
    def _final_paths(self, n: int) -> list[str]:
        return [shard_path(self.out_dir, self.prefix, i, n) for i in range(n)]

    def _temp_name(self, what: str) -> str:
        return os.path.join(self.out_dir, f".{self.prefix}.{what}-{len(self._temps):05d}.tmp-{self._token}")

    def _open_next(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._temps.append(self._temp_name("shard"))
        self._writer = tf.io.TFRecordWriter(self._temps[-1])
        self._shard_bytes = 0

    # --- writing --------------------------------------------------------------------------
    def write(self, record: bytes) -> None:
        if self._spool is None:
            if self.target_bytes is not None:
                size = len(record) + TFRECORD_FRAMING_BYTES
                if self._writer is None:
                    self._open_next()
                elif self._shard_bytes and self._shard_bytes + size > self.target_bytes:
                    self._open_next()
                self._shard_bytes += size
            elif self.num_shards > 1:
                # known total: move on past every shard whose contiguous range ends here (empty ones too)
                while len(self._temps) < self.num_shards and self.count >= self._bounds[len(self._temps)]:
                    self._open_next()
        self._writer.write(record)
        self.count += 1

    def close(self) -> list[str]:
        """Finishes every shard, gives them their final names; returns the paths in order."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.total is not None and self.count != self.total:
            self.abort()
            raise ValueError(f"{self.out_dir}/{self.prefix}: {self.count} record(s) written but total={self.total}")
        if self._spool is not None:
            self._split_spool()
        n = self.num_shards if self.num_shards is not None else max(len(self._temps), 1)
        if self.num_shards is not None and self.count < n:
            logger.warning("%s/%s: %d record(s) into %d shards: some shards are empty", self.out_dir,
                           self.prefix, self.count, n)
        while len(self._temps) < n:  # trailing empty shards (count mode), or no record at all
            self._open_next()
            self._writer.close()
            self._writer = None
        paths = self._final_paths(n)
        if self.num_shards is None:
            try:
                check_no_foreign_shards(self.out_dir, self.prefix, paths)
            except FileExistsError:
                self.abort()
                raise
        for tmp, path in zip(self._temps, paths):
            tf.io.gfile.rename(tmp, path, overwrite=True)
        self._temps = []
        return paths

    def _split_spool(self) -> None:
        """Copies the spool into `num_shards` contiguous shards (now that the count is known)."""
        bounds = np.linspace(0, self.count, self.num_shards + 1).astype(int)
        spool, self._spool = self._spool, None
        records = tf.data.TFRecordDataset(spool, buffer_size=8 * MIB).as_numpy_iterator()
        for i in range(self.num_shards):
            self._open_next()
            for _ in range(bounds[i + 1] - bounds[i]):
                self._writer.write(next(records))
        self._writer.close()
        self._writer = None
        tf.io.gfile.remove(spool)

    def abort(self) -> None:
        """Removes every temp file (shards and spool); the final names were never written."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for tmp in self._temps + ([self._spool] if self._spool else []):
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
        self._temps, self._spool = [], None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
