"""Record ids seen so far, on disk: duplicate-id checks whose memory does not grow with the corpus.

Why sqlite (the standard library's): a Python dict of every id costs ~100+ bytes per record in
RAM (tens of GB for a paper-scale corpus); sqlite's private temporary database (filename "")
keeps the ids in a B-tree on local disk behind a page cache of a few MiB, and is deleted on close.
"""

from __future__ import annotations

import sqlite3

CACHE_KIB = 4096  # sqlite page cache (negative cache_size = KiB)


class SeenIds:
    """`first_at(id, where)`: None the first time `id` is offered (and remembers `where`), else
    the `where` of its first occurrence. Use as a context manager or call `close()`."""

    def __init__(self):
        self._db = sqlite3.connect("")  # a private temporary on-disk database
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE seen (id TEXT PRIMARY KEY, at TEXT NOT NULL) WITHOUT ROWID")
        self._db.execute("BEGIN")

    def first_at(self, record_id: str, where: str) -> str | None:
        try:
            self._db.execute("INSERT INTO seen VALUES (?, ?)", (record_id, where))
            return None
        except sqlite3.IntegrityError:
            return self._db.execute("SELECT at FROM seen WHERE id = ?", (record_id,)).fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "SeenIds":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
