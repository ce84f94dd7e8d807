"""Keeping user ids out of logs, state and outputs.

Metrics never carry user ids. Logs name a user only through a :class:`UserRefs`
instance (called with the id), which by default returns a keyed hash, ``u:<12 hex>``:
stable within a deployment (so one user's lines can be correlated) but not the id
itself. With ``pseudonymize=False`` it returns the id unchanged.

Pseudonymous mode (``RECSTREAM_PRIVACY_USER_KEY`` set): :class:`UserKeys` replaces
every user id by :func:`pseudonym` before any state is written, so RocksDB, the
changelog and the output topics hold ``p:<32 hex>`` instead; the shop computes the
same pseudonyms of its own ids with the same key (:class:`streams.client.Pseudonyms`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac

__all__ = ["ERASED_PREFIX", "UserKeys", "UserRefs", "pseudonym"]


class UserRefs:
    """Turns user ids into what may appear in logs.

    Args:
        pseudonymize: replace ids by ``u:<12 hex>`` keyed hashes.
        key: secret mixed into the hash (e.g. the app id); without a secret key a
            hash of a guessable id is only a weak pseudonym.
    """

    def __init__(self, pseudonymize: bool = True, key: str = "recstream") -> None:
        self.pseudonymize = pseudonymize
        self._key = key.encode()

    def __call__(self, user_id: str | bytes | None) -> str:
        """The log-safe reference for ``user_id``."""
        if user_id is None:
            return "-"
        raw = user_id if isinstance(user_id, bytes) else user_id.encode()
        if not self.pseudonymize:
            return raw.decode(errors="replace")
        return "u:" + hmac.new(self._key, raw, hashlib.sha256).hexdigest()[:12]


def pseudonym(user_id: str, key: str) -> str:
    """The pseudonym of ``user_id`` under ``key``: ``p:`` + 32 hex of HMAC-SHA256.

    128 bits: no two users of a shop share one. The same function maps a shop's own
    user ids to what recstream stores (:class:`streams.client.Pseudonyms`).
    """
    keyed = _keyed(key).copy()
    keyed.update(user_id.encode())
    return "p:" + keyed.hexdigest()[:32]


@functools.lru_cache(maxsize=8)
def _keyed(key: str) -> hmac.HMAC:
    """HMAC-SHA256 with ``key`` and no message yet; copied per pseudonym (half the
    cost of keying a new HMAC each time, and the same digest)."""
    return hmac.new(key.encode(), digestmod=hashlib.sha256)


#: Users whose state key and marker key a :class:`UserKeys` remembers.
USER_KEY_CACHE = 16_384

#: Prefix of the erasure markers' keys in the profiles table.
ERASED_PREFIX = "erased:"


class UserKeys:
    """What a user is called in state, outputs and the erasure audit.

    Args:
        state_key: the pseudonymisation key of state and outputs (empty: user ids are
            stored as they are).
        audit_key: the key of audit pseudonyms when ``state_key`` is empty (the logs'
            pseudonym key).
    """

    def __init__(self, state_key: str, audit_key: str) -> None:
        self.pseudonymous = bool(state_key)
        self._state_key = state_key
        self._audit_key = state_key or audit_key
        # Every event needs its user's state key and erasure marker: two HMACs, kept
        # for the most recent users instead of computed again per event.
        self.state = functools.lru_cache(maxsize=USER_KEY_CACHE)(self.state)  # type: ignore[method-assign]
        self.marker = functools.lru_cache(maxsize=USER_KEY_CACHE)(self.marker)  # type: ignore[method-assign]

    def forget(self) -> None:
        """Drop the remembered keys (an erased user's id leaves the process memory)."""
        self.state.cache_clear()  # type: ignore[attr-defined]
        self.marker.cache_clear()  # type: ignore[attr-defined]

    def state(self, user_id: str) -> str:
        """The key of the user's profile and outputs: the pseudonym, or the id itself."""
        return pseudonym(user_id, self._state_key) if self.pseudonymous else user_id

    def audit(self, user_id: str) -> str:
        """The pseudonym recorded in the erasure audit (never the id)."""
        return pseudonym(user_id, self._audit_key)

    def marker(self, user_id: str) -> str:
        """The table key remembering that the user was erased (no raw id in it)."""
        return ERASED_PREFIX + self.audit(user_id)[2:]
