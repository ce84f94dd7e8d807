"""Keeping user ids out of logs.

Metrics never carry user ids. Logs name a user only through a :class:`UserRefs`
instance (called with the id), which by default returns a keyed hash, ``u:<12 hex>``:
stable within a deployment (so one user's lines can be correlated) but not the id
itself. With ``pseudonymize=False`` it returns the id unchanged.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["UserRefs"]


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
