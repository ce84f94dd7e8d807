"""`recstream produce` routes each line by its ``type``: events, searches, catalog records."""

from __future__ import annotations

import pytest

from deploy.cli import route_line
from streams.topics import TopicNames

NAMES = TopicNames()


@pytest.mark.parametrize(
    ("payload", "default", "route"),
    [
        ({"type": "click", "user_id": "u1", "item_id": "i1"}, None, (NAMES.clicks, "u1")),
        ({"event_type": "purchase", "user_id": "u2"}, None, (NAMES.purchases, "u2")),
        ({"user_id": "u3", "item_id": "i1"}, "browse", (NAMES.browses, "u3")),
        ({"type": "search", "user_id": "u4", "query": "tea"}, None, (NAMES.searches, "u4")),
        ({"type": "item", "item_id": "sku-9", "title": "Oolong"}, None, (NAMES.items, "sku-9")),
        ({"item_id": "sku-9", "title": "Oolong"}, "item", (NAMES.items, "sku-9")),
        ({"type": "item", "title": "no id"}, None, (NAMES.items, None)),  # DLQ'd by the worker
        ({"type": "click", "user_id": "u1"}, "search", (NAMES.clicks, "u1")),  # own type wins
    ],
)
def test_lines_go_to_the_topic_of_their_type(
    payload: object, default: str | None, route: tuple[str, str | None]
) -> None:
    assert route_line(payload, NAMES, default) == route


@pytest.mark.parametrize("payload", [{"type": "refund", "user_id": "u1"}, {"user_id": "u1"}, None])
def test_lines_of_no_known_type_are_skipped(payload: object) -> None:
    assert route_line(payload, NAMES, None) is None
