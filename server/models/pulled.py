"""The models Hearth pulled (from Hugging Face, the Ollama registry, a URL): one row each in
``models_dir/pulled.sqlite3``, so that a pulled model is served by its name after a restart
and by every server sharing the folder, without a config entry.

A row names the model, the reference it was pulled from, its files (relative to the models
folder: the GGUF first, every part of a split one), the chat template file that goes with it
where its GGUF has none, and model settings that came with it (an Ollama model's parameters).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.errors import ModelSourceError

DATABASE = "pulled.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pulled (
    name TEXT PRIMARY KEY,
    reference TEXT NOT NULL,
    files TEXT NOT NULL,
    template TEXT,
    settings TEXT NOT NULL,
    size INTEGER NOT NULL,
    pulled_at REAL NOT NULL
)
"""


@dataclass(frozen=True)
class PulledModel:
    name: str
    reference: str
    files: tuple[str, ...]  # relative to the models folder; the GGUF (its first part) first
    template: str | None = None  # a chat template file, relative to the models folder
    settings: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    size: int = 0
    pulled_at: float = 0.0

    @property
    def gguf(self) -> str:
        return self.files[0]


class PulledModels:
    """The pulled models' table (a connection per call: callers are threads and processes)."""

    def __init__(self, models_dir: Path) -> None:
        self._dir = models_dir

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self._dir.mkdir(parents=True, exist_ok=True)
        try:
            with closing(sqlite3.connect(self._dir / DATABASE, timeout=10)) as db, db:
                db.execute(_SCHEMA)
                yield db
        except sqlite3.Error as exc:
            raise ModelSourceError(f"{self._dir / DATABASE}: {exc}") from exc

    def all(self) -> list[PulledModel]:
        if not (self._dir / DATABASE).is_file():
            return []
        with self._db() as db:
            rows = db.execute("SELECT * FROM pulled ORDER BY name").fetchall()
        return [_model(row) for row in rows]

    def get(self, name: str) -> PulledModel | None:
        if not (self._dir / DATABASE).is_file():
            return None
        with self._db() as db:
            row = db.execute("SELECT * FROM pulled WHERE name = ?", (name,)).fetchone()
        return _model(row) if row else None

    def put(self, model: PulledModel) -> PulledModel:
        stamped = PulledModel(
            model.name,
            model.reference,
            model.files,
            model.template,
            model.settings,
            model.size,
            model.pulled_at or time.time(),
        )
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO pulled VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    stamped.name,
                    stamped.reference,
                    json.dumps(list(stamped.files)),
                    stamped.template,
                    json.dumps(stamped.settings),
                    stamped.size,
                    stamped.pulled_at,
                ),
            )
        return stamped

    def delete(self, name: str) -> PulledModel | None:
        """Forget ``name``; its files are deleted by the caller (others may share them)."""
        model = self.get(name)
        if model is not None:
            with self._db() as db:
                db.execute("DELETE FROM pulled WHERE name = ?", (name,))
        return model

    def remove(self, name: str) -> PulledModel | None:
        """Forget ``name`` and delete its files that no other pulled model uses."""
        model = self.delete(name)
        if model is not None:
            self.delete_unused(model)
        return model

    def delete_unused(self, model: PulledModel) -> None:
        """Delete ``model``'s files that no pulled model uses (a copy shares its original's;
        a re-pull may keep some) and that lie in the models folder (a copy of a configured
        model names a file elsewhere: never deleted)."""
        root = self._dir.resolve()
        for path in (*model.files, model.template):
            if path is None or self.in_use(path):
                continue
            full = (self._dir / path).resolve()
            if full.is_relative_to(root) and full != root:
                full.unlink(missing_ok=True)

    def in_use(self, path: str) -> bool:
        """Whether any pulled model uses the file ``path`` (relative to the models folder)."""
        return any(path in (*m.files, m.template) for m in self.all())


def _model(row: tuple[Any, ...]) -> PulledModel:
    name, reference, files, template, settings, size, pulled_at = row
    return PulledModel(
        name, reference, tuple(json.loads(files)), template, json.loads(settings), size, pulled_at
    )
