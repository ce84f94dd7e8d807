"""Versioned model store: ``<root>/<model_version>/{model.onnx,metadata.json}`` + ``CURRENT``.

Layout::

    store/
      CURRENT                      # one line: the active version (replaced atomically)
      HISTORY                      # promotions and rollbacks, oldest first (see below)
      20261123T150102Z-1a2b3c4d/   # one directory per version, never modified in place
        model.onnx
        metadata.json
        checkpoint.pt              # optional: the torch weights, for warm starts
      20261124T030000Z-5e6f7a8b/
        ...

Publishing renames a fully written model directory into the store (atomic on one file
system), so a version directory is either complete or absent. Promoting writes
``CURRENT`` to a temporary file, fsyncs it and renames it over the old one, so a reader
sees the old or the new version, never a partial name. Workers roll forward by polling
`ModelStore.current()` and loading the new directory (the worker's hot reload in
``streams.reload`` does this).

``HISTORY`` is an append-only log of every change of ``CURRENT`` made by `promote` and
`rollback`, one ``<utc time> promote|rollback <from or -> <to>`` line each, replaced
atomically like ``CURRENT`` (so it is never half written) after ``CURRENT`` was
replaced. Replaying it gives the stack of versions that were current before each
promotion still in effect; `ModelStore.rollback` pops it. Promotions must not run
concurrently (the retraining CronJob is ``concurrencyPolicy: Forbid``): two at once
could lose a HISTORY line.

Stdlib only: the serving path imports it.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from models.metadata import METADATA_FILENAME, MODEL_FILENAME

__all__ = [
    "CURRENT_FILENAME",
    "HISTORY_FILENAME",
    "ModelStore",
    "StoreError",
    "VersionInfo",
    "resolve_model_dir",
]

#: Pointer file naming the active version.
CURRENT_FILENAME = "CURRENT"
#: Log of the changes of CURRENT (promotions and rollbacks).
HISTORY_FILENAME = "HISTORY"

# Version directory names: no separators, no leading dot (dot = staging / temporary).
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StoreError(RuntimeError):
    """Raised on an invalid store operation (unknown version, duplicate publish, ...)."""


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """Summary of one stored version (read from its metadata.json).

    Attributes:
        version: The version (directory name).
        path: The version directory.
        created_at: Creation time from the metadata.
        variant: "fp32", "fp16" or "int8".
        metrics: Offline metrics recorded at export.
    """

    version: str
    path: Path
    created_at: str
    variant: str
    metrics: dict[str, float]


def _is_model_dir(path: Path) -> bool:
    return (path / METADATA_FILENAME).is_file() and (path / MODEL_FILENAME).is_file()


class ModelStore:
    """A directory of immutable model versions plus a `CURRENT` pointer.

    Args:
        root: Store directory (created on first publish).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def staging_dir(self) -> Path:
        """A fresh, not yet existing directory inside the store to export into."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f".staging-{uuid.uuid4().hex}"

    def publish(self, model_dir: Path, version: str | None = None) -> str:
        """Move a complete model directory into the store under its version.

        Args:
            model_dir: Directory with model.onnx + metadata.json, on the same file system
                as the store (use `staging_dir`).
            version: Store name (default: `model_version` from its metadata).

        Returns:
            The version.

        Raises:
            StoreError: If the directory is incomplete or the version already exists.
        """
        model_dir = Path(model_dir)
        if not _is_model_dir(model_dir):
            raise StoreError(f"{model_dir} is not a model directory (model.onnx + metadata.json)")
        if version is None:
            version = str(json.loads((model_dir / METADATA_FILENAME).read_text())["model_version"])
        if not _VERSION_RE.match(version):
            raise StoreError(f"invalid version name {version!r}")
        target = self.root / version
        if target.exists():
            raise StoreError(f"version {version} already exists in {self.root}")
        self.root.mkdir(parents=True, exist_ok=True)
        os.rename(model_dir, target)
        _fsync_dir(self.root)
        return version

    def versions(self) -> list[str]:
        """Complete version directories, sorted by name (= creation time for our versions)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _VERSION_RE.match(p.name) and _is_model_dir(p)
        )

    def list(self) -> list[VersionInfo]:
        """`VersionInfo` for every version, oldest first."""
        out: list[VersionInfo] = []
        for version in self.versions():
            path = self.root / version
            meta = json.loads((path / METADATA_FILENAME).read_text())
            out.append(
                VersionInfo(
                    version=version,
                    path=path,
                    created_at=str(meta.get("created_at", "")),
                    variant=str(meta.get("variant", "fp32")),
                    metrics={str(k): float(v) for k, v in meta.get("metrics", {}).items()},
                )
            )
        return out

    def current(self) -> str | None:
        """The active version, or None if nothing was promoted yet."""
        try:
            name = (self.root / CURRENT_FILENAME).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name or None

    def current_dir(self) -> Path:
        """Directory of the active version.

        Raises:
            StoreError: If there is no CURRENT or it names a missing version.
        """
        version = self.current()
        if version is None:
            raise StoreError(f"{self.root} has no {CURRENT_FILENAME}; promote a version first")
        path = self.root / version
        if not _is_model_dir(path):
            raise StoreError(f"{CURRENT_FILENAME} names {version!r}, which is not in {self.root}")
        return path

    def promote(self, version: str) -> None:
        """Atomically point CURRENT at `version` and record the promotion in HISTORY.

        Promoting an older version is also a way to roll back (by name); `rollback`
        returns to the version that was current before the latest promotion.

        Raises:
            StoreError: If the version is not in the store.
        """
        if not _VERSION_RE.match(version) or not _is_model_dir(self.root / version):
            raise StoreError(f"unknown version {version!r} in {self.root}")
        previous = self.current()
        self._write_atomic(CURRENT_FILENAME, version + "\n")
        if previous != version:
            self._record("promote", previous, version)

    def rollback(self) -> str:
        """Point CURRENT back at the version that was current before the latest promotion.

        Repeated rollbacks walk further back (promote A, B, C; rollback -> B; rollback
        -> A). The rollback is recorded in HISTORY; a later promotion starts a new step.

        Returns:
            The version CURRENT now names.

        Raises:
            StoreError: If there is nothing to roll back to, that version's directory is
                gone, or CURRENT was changed outside `promote`/`rollback` (then HISTORY
                cannot tell what came before it: use `promote` with a version).
        """
        current = self.current()
        recorded, previous = self._replay()
        if current != recorded:
            raise StoreError(
                f"{CURRENT_FILENAME} in {self.root} names {current!r} but {HISTORY_FILENAME} "
                f"last recorded {recorded!r} (changed by hand?); cannot tell which version "
                "came before it: promote one by name instead"
            )
        if not previous:
            raise StoreError(
                f"nothing to roll back to in {self.root}: no promotion before "
                f"{current!r} is recorded in {HISTORY_FILENAME}"
            )
        target = previous[-1]
        if not _VERSION_RE.match(target) or not _is_model_dir(self.root / target):
            raise StoreError(
                f"cannot roll back to {target!r} (current before the latest promotion): "
                f"it is no longer in {self.root}"
            )
        self._write_atomic(CURRENT_FILENAME, target + "\n")
        self._record("rollback", current, target)
        return target

    def history(self) -> builtins.list[tuple[str, str, str | None, str]]:
        """HISTORY as ``(time, action, from, to)`` tuples, oldest first (``from`` None
        when nothing was current).

        Raises:
            StoreError: If a line is malformed.
        """
        try:
            text = (self.root / HISTORY_FILENAME).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out: builtins.list[tuple[str, str, str | None, str]] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 4 or parts[1] not in ("promote", "rollback"):
                raise StoreError(f"{self.root / HISTORY_FILENAME}:{n}: malformed line {line!r}")
            time, action, frm, to = parts
            out.append((time, action, None if frm == "-" else frm, to))
        return out

    def _replay(self) -> tuple[str | None, builtins.list[str]]:
        """(CURRENT as HISTORY last recorded it, versions current before each promotion
        still in effect, newest last)."""
        current: str | None = None
        previous: builtins.list[str] = []
        for _, action, frm, to in self.history():
            if action == "promote":
                if frm is not None:
                    previous.append(frm)
            elif previous:
                previous.pop()
            current = to
        return current, previous

    def _record(self, action: str, frm: str | None, to: str) -> None:
        """Append one line to HISTORY (by rewriting it atomically)."""
        path = self.root / HISTORY_FILENAME
        try:
            old = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            old = ""
        if old and not old.endswith("\n"):
            old += "\n"
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._write_atomic(HISTORY_FILENAME, f"{old}{stamp} {action} {frm or '-'} {to}\n")

    def _write_atomic(self, name: str, text: str) -> None:
        """Write ``<root>/<name>`` via a fsynced temporary file and a rename."""
        tmp = self.root / f".{name}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / name)
        _fsync_dir(self.root)


def resolve_model_dir(path: Path) -> Path:
    """Accept a model directory or a store root; return the model directory to load.

    A directory containing ``CURRENT`` is a store and resolves to its active version;
    anything else is returned unchanged (the loader reports what is missing).

    Args:
        path: ``<dir>`` with model.onnx + metadata.json, or a store root with CURRENT.

    Raises:
        StoreError: If a store's CURRENT names a missing version.
    """
    path = Path(path)
    if not _is_model_dir(path) and (path / CURRENT_FILENAME).is_file():
        return ModelStore(path).current_dir()
    return path


def _fsync_dir(path: Path) -> None:
    """Persist a directory entry change (rename) where the OS supports it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
