"""Module-level app for Faust's own CLI: ``faust -A deploy.app worker -l info``.

Configuration comes from ``RECSTREAM_*`` environment variables, as for
``recstream worker``.
"""

from __future__ import annotations

from deploy.settings import Settings
from deploy.worker import build_app

app = build_app(Settings())
