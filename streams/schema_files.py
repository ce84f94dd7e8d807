"""JSON Schema documents for every message recstream reads or writes.

Generated from the pydantic models in :mod:`streams.events`, :mod:`streams.messages`,
:mod:`streams.control`, :mod:`streams.rules` and :mod:`streams.catalog`; the committed copies under
``streams/schemas/`` are checked against these by the test-suite, so they never drift.
Superseded versions (``recommendation.v1.json``) stay committed as they were, for
consumers that still validate against them; only current versions are generated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from streams.catalog import CatalogItem
from streams.control import ErasureRequest
from streams.events import BrowseEvent, ClickEvent, PurchaseEvent, SearchEvent
from streams.messages import DeadLetter, ErasureAudit, RecommendationMessage
from streams.rules import ItemRule

__all__ = ["SCHEMA_DIR", "json_schemas", "write_schemas"]

SCHEMA_DIR = Path(__file__).parent / "schemas"

_MODELS: dict[str, type[BaseModel]] = {
    "click.v1": ClickEvent,
    "browse.v1": BrowseEvent,
    "purchase.v1": PurchaseEvent,
    "search.v1": SearchEvent,
    "recommendation.v2": RecommendationMessage,
    "dead-letter.v1": DeadLetter,
    "erasure-request.v1": ErasureRequest,
    "erasure-audit.v1": ErasureAudit,
    "item-rule.v1": ItemRule,
    "item.v1": CatalogItem,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """File stem -> JSON Schema (draft 2020-12) of that message."""
    out = {}
    for stem, model in _MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://recstream.dev/schemas/{stem}.json"
        out[stem] = schema
    return out


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema as ``<stem>.json``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, schema in json_schemas().items():
        path = directory / f"{stem}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths
