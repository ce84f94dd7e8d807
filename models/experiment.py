"""A/B experiments in a model store: a candidate version beside ``CURRENT`` on a share of users.

Layout: the store's ``EXPERIMENT`` file (JSON, replaced atomically like ``CURRENT``)::

    {"candidate": "20261124T030000Z-5e6f7a8b", "share": 0.1,
     "salt": "3f2a9c1e", "started_at": "2026-12-02T13:00:00Z"}

Users are split by a stable hash of ``salt`` and ``user_id`` (:func:`assign_arm`): the
same user is in the same arm in every worker and after every restart, and a new
experiment (a new salt) reshuffles users. Workers serve the ``candidate`` arm with the
candidate version and the ``control`` arm with ``CURRENT``; every recommendation
carries its arm and model version, and the hit counters are labelled with both and
with the experiment's id (:attr:`Experiment.id`, :data:`NO_EXPERIMENT` outside one),
so an experiment's arms are compared on its own traffic only.
:func:`promote_candidate` makes the candidate ``CURRENT`` and ends the experiment;
:func:`two_proportion_z_test` compares the arms' hit rates.

Stdlib only: the serving path imports it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.store import ModelStore, StoreError, _fsync_dir

__all__ = [
    "CANDIDATE",
    "CONTROL",
    "EXPERIMENT_FILENAME",
    "NO_EXPERIMENT",
    "Experiment",
    "assign_arm",
    "experiment_id",
    "promote_candidate",
    "read_experiment",
    "start_experiment",
    "stop_experiment",
    "two_proportion_z_test",
]

#: The experiment file beside CURRENT.
EXPERIMENT_FILENAME = "EXPERIMENT"
#: Users served by CURRENT (everyone, outside an experiment).
CONTROL = "control"
#: Users served by the experiment's candidate version.
CANDIDATE = "candidate"
#: The ``experiment`` label of lists scored outside an experiment.
NO_EXPERIMENT = "none"

_SCALE = float(1 << 64)


@dataclass(frozen=True, slots=True)
class Experiment:
    """A running experiment.

    Attributes:
        candidate: the version served to the candidate arm.
        share: fraction of users in the candidate arm, in [0, 1].
        salt: mixed into the user hash; a new experiment gets a new salt.
        started_at: UTC time the experiment started (ISO 8601).
    """

    candidate: str
    share: float
    salt: str
    started_at: str

    @property
    def id(self) -> str:
        """A short, stable id of this experiment (from its salt): the ``experiment`` label."""
        return experiment_id(self.salt)

    def arm(self, user_id: str) -> str:
        """The arm of ``user_id`` in this experiment."""
        return assign_arm(user_id, self.share, self.salt)

    def to_json(self) -> str:
        """The ``EXPERIMENT`` file's text."""
        return json.dumps(asdict(self), sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Experiment:
        """Parse the ``EXPERIMENT`` file's text.

        Raises:
            StoreError: if it is not a valid experiment.
        """
        try:
            doc: dict[str, Any] = json.loads(text)
            experiment = cls(
                candidate=str(doc["candidate"]),
                share=float(doc["share"]),
                salt=str(doc["salt"]),
                started_at=str(doc.get("started_at", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"malformed {EXPERIMENT_FILENAME}: {exc}") from exc
        if not 0.0 <= experiment.share <= 1.0:
            raise StoreError(f"{EXPERIMENT_FILENAME} share {experiment.share} is not in [0, 1]")
        return experiment


def experiment_id(salt: str) -> str:
    """The first 8 hex digits of the SHA-256 of ``salt``: one label value per experiment."""
    return hashlib.sha256(salt.encode()).hexdigest()[:8]


def assign_arm(user_id: str, share: float, salt: str) -> str:
    """:data:`CANDIDATE` for a stable ``share`` of users, else :data:`CONTROL`.

    A keyed BLAKE2b of the user id, read as a number in [0, 1): the same in every
    process (unlike ``hash()``), uniform, and independent between salts.
    """
    digest = hashlib.blake2b(user_id.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return CANDIDATE if int.from_bytes(digest, "big") / _SCALE < share else CONTROL


def read_experiment(store: ModelStore) -> Experiment | None:
    """The store's running experiment, or ``None``.

    Raises:
        StoreError: if the file is malformed.
    """
    try:
        text = (store.root / EXPERIMENT_FILENAME).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return Experiment.from_json(text)


def start_experiment(
    store: ModelStore, candidate: str, share: float, salt: str | None = None
) -> Experiment:
    """Serve ``candidate`` to ``share`` of users beside CURRENT (replaces a running one).

    Raises:
        StoreError: if there is no CURRENT, the candidate is not in the store or is
            CURRENT, or the share is not in (0, 1].
    """
    if not 0.0 < share <= 1.0:
        raise StoreError(f"share {share} is not in (0, 1]")
    current = store.current()
    if current is None:
        raise StoreError(f"{store.root} has no CURRENT: promote a version first")
    if candidate not in store.versions():
        raise StoreError(f"unknown version {candidate!r} in {store.root}")
    if candidate == current:
        raise StoreError(f"{candidate} is CURRENT already")
    experiment = Experiment(
        candidate=candidate,
        share=share,
        salt=salt or secrets.token_hex(8),
        started_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    _write_atomic(store.root / EXPERIMENT_FILENAME, experiment.to_json())
    return experiment


def stop_experiment(store: ModelStore) -> Experiment | None:
    """End the running experiment (everyone back on CURRENT); returns it, if any."""
    experiment = read_experiment(store)
    try:
        os.unlink(store.root / EXPERIMENT_FILENAME)
    except FileNotFoundError:
        return None
    _fsync_dir(store.root)
    return experiment


def promote_candidate(store: ModelStore) -> Experiment:
    """Make the candidate CURRENT (recorded in HISTORY) and end the experiment.

    CURRENT changes first: a worker that reads in between serves the candidate to
    both arms, never the old version to the candidate arm.

    Raises:
        StoreError: if no experiment runs or its candidate is gone.
    """
    experiment = read_experiment(store)
    if experiment is None:
        raise StoreError(f"no experiment runs in {store.root}")
    store.promote(experiment.candidate)
    stop_experiment(store)
    return experiment


def two_proportion_z_test(hits_a: int, n_a: int, hits_b: int, n_b: int) -> tuple[float, float]:
    """Two-sided two-proportion z-test (pooled variance) of ``hits_a/n_a`` vs ``hits_b/n_b``.

    Returns:
        ``(z, p_value)``; ``(0.0, 1.0)`` when a group is empty or the pooled rate is
        0 or 1 (no evidence either way).
    """
    if n_a <= 0 or n_b <= 0:
        return 0.0, 1.0
    pooled = (hits_a + hits_b) / (n_a + n_b)
    variance = pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b)
    if variance <= 0.0:
        return 0.0, 1.0
    z = (hits_b / n_b - hits_a / n_a) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2.0))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
