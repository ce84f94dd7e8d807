"""Versioned model store: ``<root>/<model_version>/{model.onnx,metadata.json}`` + ``CURRENT``.

Layout::

    store/
      CURRENT                      # one line: the active version (replaced atomically)
      20261123T150102Z-1a2b3c4d/   # one directory per version, never modified in place
        model.onnx
        metadata.json
      20261124T030000Z-5e6f7a8b/
        ...

Publishing renames a fully written model directory into the store (atomic on one file
system), so a version directory is either complete or absent. Promoting writes
``CURRENT`` to a temporary file, fsyncs it and renames it over the old one, so a reader
sees the old or the new version, never a partial name. Workers roll forward by polling
`ModelStore.current()` and loading the new directory (the worker's hot reload in
``streams.reload`` does this).

Stdlib only: the serving path imports it.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from models.metadata import METADATA_FILENAME, MODEL_FILENAME

__all__ = [
    "CURRENT_FILENAME",
    "ModelStore",
    "StoreError",
    "VersionInfo",
    "resolve_model_dir",
]

#: Pointer file naming the active version.
CURRENT_FILENAME = "CURRENT"

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
        """Atomically point CURRENT at `version` (also used to roll back).

        Raises:
            StoreError: If the version is not in the store.
        """
        if not _VERSION_RE.match(version) or not _is_model_dir(self.root / version):
            raise StoreError(f"unknown version {version!r} in {self.root}")
        tmp = self.root / f".{CURRENT_FILENAME}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / CURRENT_FILENAME)
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
