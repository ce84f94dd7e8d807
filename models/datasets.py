"""Readers for the data the models train on (stdlib only).

Three formats:

* the project's own **event log**: JSON lines in the recstream event format (fields
  ``event_id, user_id, item_id, ts, channel, type | event_type``; ``ts`` as Unix
  seconds or an RFC 3339 string) or CSV with a header containing at least
  ``user_id,item_id,event_type,ts`` (``channel`` optional, ``type`` accepted too).
  ``ts`` is checked by the live worker's rules (``models.contract.check_timestamp``):
  a record the worker would dead-letter for its timestamp is an invalid record here;
  a CSV ``ts`` cell that is a JSON number literal counts as that number; search
  records (``type`` ``search``, the worker's fourth input) are no interactions and
  are skipped;
* **one sequence per line**: ``user item1 item2 ...`` in chronological order (the
  S3-Rec Amazon Beauty file), plus its optional ``{item: [attribute, ...]}`` JSON;
* **sessions**: one session of item ids per line for training, and
  ``prefix items<TAB>target`` test cases (the SR-GNN DIGINETICA files).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.contract import SEARCH_TYPE, check_timestamp
from models.interactions import CHANNELS, EVENT_TYPES, Interaction

__all__ = [
    "DataFormatError",
    "PrefixTarget",
    "read_event_log",
    "read_item_attributes",
    "read_item_texts",
    "read_prefix_targets",
    "read_sequences",
    "read_sessions",
]

logger = logging.getLogger("recstream.models.datasets")


class DataFormatError(ValueError):
    """Raised when an input file cannot be parsed; the message names file and line."""


@dataclass(frozen=True, slots=True)
class PrefixTarget:
    """One session test case: the items seen so far and the next one.

    Attributes:
        prefix: Oldest-first item ids.
        target: The item viewed next.
    """

    prefix: tuple[str, ...]
    target: str


#: A JSON number literal; a CSV ``ts`` cell spelled like this is read as that number.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _interaction_from_record(record: dict[str, Any], where: str, now: float) -> Interaction:
    try:
        user = record["user_id"]
        item = record["item_id"]
        ts = check_timestamp(record["ts"], now=now)
    except KeyError as exc:
        raise DataFormatError(f"{where}: missing field {exc.args[0]!r}") from exc
    except ValueError as exc:
        raise DataFormatError(f"{where}: {exc}") from exc
    event_type = record.get("event_type") or record.get("type")
    if event_type not in EVENT_TYPES:
        raise DataFormatError(
            f"{where}: event type {event_type!r} is not one of {', '.join(EVENT_TYPES)}"
        )
    channel = record.get("channel") or "web"
    if channel not in CHANNELS:
        raise DataFormatError(f"{where}: channel {channel!r} is not one of {', '.join(CHANNELS)}")
    if user in (None, "") or item in (None, ""):
        raise DataFormatError(f"{where}: empty user_id or item_id")
    return Interaction(str(user), str(item), str(event_type), ts, str(channel))


def _raw_json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any] | DataFormatError]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, DataFormatError(f"{where}: invalid JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                yield where, DataFormatError(f"{where}: expected a JSON object")
                continue
            yield where, record


def _raw_csv(path: Path) -> Iterator[tuple[str, dict[str, Any] | DataFormatError]]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or ())
        if not {"user_id", "item_id", "ts"} <= fields or not fields & {"event_type", "type"}:
            raise DataFormatError(
                f"{path}: CSV header must contain user_id,item_id,event_type,ts "
                f"(channel optional), got {sorted(fields)}"
            )
        for lineno, row in enumerate(reader, 2):
            record: dict[str, Any] = dict(row)
            # CSV cells are untyped: a cell written as a JSON number is that number, as if
            # the line were JSON; anything else stays a string for the RFC 3339 rules.
            cell = record.get("ts")
            if isinstance(cell, str) and _JSON_NUMBER.fullmatch(cell):
                record["ts"] = json.loads(cell)
            yield f"{path}:{lineno}", record


def read_event_log(
    path: Path, *, skip_invalid: bool = False, now: float | None = None
) -> list[Interaction]:
    """Read a recstream event log (JSON lines, or CSV when the file ends in ``.csv``).

    A record is invalid when the live worker would reject its timestamp (see
    ``models.contract.check_timestamp``: a number is Unix seconds, a string must be
    RFC 3339 with an offset or ``Z``, and the time must lie in [2000-01-01, now + 1 day]),
    has no user or item id, or has an unknown event type or channel.

    Args:
        path: The log file (``.jsonl``/``.json``/``.ndjson`` or ``.csv``).
        skip_invalid: Log and skip invalid records instead of raising (a bad CSV header
            always raises).
        now: Current Unix time for the future-skew check (defaults to the clock).

    Returns:
        Interactions in file order.

    Raises:
        DataFormatError: On the first invalid record unless `skip_invalid`.
    """
    path = Path(path)
    raw = _raw_csv(path) if path.suffix.lower() == ".csv" else _raw_json_lines(path)
    current = time.time() if now is None else now
    out: list[Interaction] = []
    skipped = 0
    for where, record in raw:
        try:
            if isinstance(record, DataFormatError):
                raise record
            if (record.get("event_type") or record.get("type")) == SEARCH_TYPE:
                continue  # a search is no interaction (models.contract.SEARCH_TYPE)
            out.append(_interaction_from_record(record, where, current))
        except DataFormatError as exc:
            if not skip_invalid:
                raise
            skipped += 1
            logger.warning("skipping invalid record: %s", exc)
    if skipped:
        logger.warning("%s: skipped %d invalid records", path, skipped)
    return out


def read_sequences(path: Path) -> dict[str, list[str]]:
    """Read ``user item1 item2 ...`` lines (chronological items) into user -> items.

    Args:
        path: e.g. ``Beauty.txt``.

    Returns:
        User id -> oldest-first item ids, in file order.

    Raises:
        DataFormatError: On a line without items or a repeated user.
    """
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise DataFormatError(f"{path}:{lineno}: user {parts[0]!r} has no items")
            if parts[0] in out:
                raise DataFormatError(f"{path}:{lineno}: user {parts[0]!r} appears twice")
            out[parts[0]] = parts[1:]
    return out


def read_item_attributes(path: Path) -> dict[str, list[str]]:
    """Read ``{item_id: [attribute_id, ...]}`` JSON (e.g. ``Beauty_item2attributes.json``).

    Returns:
        Item id -> attribute ids as strings.
    """
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a JSON object item -> [attributes]")
    return {str(k): [str(a) for a in v] for k, v in data.items()}


def read_item_texts(path: Path) -> dict[str, str]:
    """Read item descriptions: JSON lines ``{"item_id": ..., "text": ...}`` or a JSON object.

    Returns:
        Item id -> text.
    """
    path = Path(path)
    content = Path(path).read_text(encoding="utf-8")
    try:
        whole = json.loads(content)
    except json.JSONDecodeError:
        whole = None  # JSON lines
    if isinstance(whole, dict) and "item_id" not in whole:
        return {str(k): str(v) for k, v in whole.items()}
    out: dict[str, str] = {}
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or "item_id" not in record or "text" not in record:
            raise DataFormatError(f"{path}:{lineno}: expected {{'item_id': ..., 'text': ...}}")
        out[str(record["item_id"])] = str(record["text"])
    return out


def read_sessions(path: Path) -> list[list[str]]:
    """Read one session per line (whitespace separated item ids, in order).

    Returns:
        Sessions in file order; empty lines are skipped.
    """
    with open(path, encoding="utf-8") as fh:
        return [parts for line in fh if (parts := line.split())]


def read_prefix_targets(path: Path) -> list[PrefixTarget]:
    """Read ``prefix items<TAB>target`` test cases.

    Raises:
        DataFormatError: On a line without a tab, an empty prefix or an empty target.
    """
    out: list[PrefixTarget] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            prefix, sep, target = line.rstrip("\r\n").partition("\t")
            items = tuple(prefix.split())
            if not sep or not items or not target.strip():
                raise DataFormatError(f"{path}:{lineno}: expected 'prefix items<TAB>target'")
            out.append(PrefixTarget(items, target.strip()))
    return out
