"""Where keys and aliases live: in memory only, or also in a SQLite file that survives restarts.

The file is ``<state_dir>/kms.sqlite3``; the directory is created 0700 and the file (with its
journal) 0600, because it holds key material. Writes go through at once (autocommit per
change), so a killed server loses nothing it acknowledged.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from emulator.kms.keys import KmsKey

__all__ = ["Alias", "KeyStore", "MemoryStore", "SqliteStore", "open_store"]

DATABASE_NAME = "kms.sqlite3"


@dataclass(frozen=True)
class Alias:
    """An alias: ``alias/<name>`` -> a key id, with its timestamps (epoch seconds)."""

    name: str
    key_id: str
    created: float
    updated: float


class KeyStore:
    """The persistence interface: the in-memory one keeps nothing."""

    def load(self) -> tuple[list[KmsKey], list[Alias]]:
        """Everything stored, keys and aliases."""
        return [], []

    def save_key(self, key: KmsKey) -> None:
        """Insert or replace a key."""

    def delete_key(self, key_id: str) -> None:
        """Remove a key (and nothing else)."""

    def save_alias(self, alias: Alias) -> None:
        """Insert or replace an alias."""

    def delete_alias(self, name: str) -> None:
        """Remove an alias."""

    def close(self) -> None:
        """Release the store's resources."""


class MemoryStore(KeyStore):
    """Keeps nothing: state lives only in the backend's memory (``--memory``)."""


class SqliteStore(KeyStore):
    """Keys, aliases and policies in ``<directory>/kms.sqlite3``. Thread-safe."""

    def __init__(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        self.path = directory / DATABASE_NAME
        if not self.path.exists():
            # Create it 0600 before SQLite opens it, so it is never world-readable.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(self.path, 0o600)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=DELETE")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS keys "
                "(key_id TEXT PRIMARY KEY, record TEXT NOT NULL, material BLOB NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS aliases "
                "(name TEXT PRIMARY KEY, key_id TEXT NOT NULL, created REAL, updated REAL)"
            )

    def load(self) -> tuple[list[KmsKey], list[Alias]]:
        with self._lock:
            key_rows = self._db.execute("SELECT record, material FROM keys").fetchall()
            alias_rows = self._db.execute(
                "SELECT name, key_id, created, updated FROM aliases"
            ).fetchall()
        keys = []
        for record, material in key_rows:
            fields = json.loads(record)
            fields["tags"] = tuple(tuple(tag) for tag in fields.get("tags", ()))
            keys.append(KmsKey(material=bytes(material), **fields))
        aliases = [Alias(name, key_id, created, updated) for name, key_id, created, updated in alias_rows]
        return keys, aliases

    def save_key(self, key: KmsKey) -> None:
        fields = asdict(key)
        material = fields.pop("material")
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO keys (key_id, record, material) VALUES (?, ?, ?)",
                (key.key_id, json.dumps(fields), material),
            )

    def delete_key(self, key_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM keys WHERE key_id = ?", (key_id,))

    def save_alias(self, alias: Alias) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO aliases (name, key_id, created, updated) VALUES (?, ?, ?, ?)",
                (alias.name, alias.key_id, alias.created, alias.updated),
            )

    def delete_alias(self, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM aliases WHERE name = ?", (name,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_store(state_dir: Path | None) -> KeyStore:
    """A SQLite store in ``state_dir``, or a memory store when it is None."""
    return MemoryStore() if state_dir is None else SqliteStore(Path(state_dir))
