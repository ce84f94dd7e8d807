"""Settings of the archiver (``recstream archive``): the ``RECSTREAM_ARCHIVE_*`` group.

The archive is a day-partitioned Parquet training log written by
:class:`streams.archive.Archiver`; see ``docs/BENCHMARKS.md`` ("Archive format") for
why Parquet. This group lives in ``deploy`` because only the composition root reads
it: the CLI hands its values to the archiver as plain arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from streams.config import ConfigGroup

__all__ = ["ArchiveConfig"]


class ArchiveConfig(ConfigGroup):
    """Where and how the archiver writes the training log."""

    env_prefix: ClassVar[str] = "archive_"

    dir: Path = Field(
        Path("var/archive"),
        description="Root of the training archive (`day=YYYY-MM-DD/part-*.parquet`, UTC "
        "event-time days).",
    )
    retention_days: int = Field(
        30, ge=1, description="Day folders older than this many days (by folder date) are deleted."
    )
    flush_records: int = Field(
        50_000,
        ge=1,
        description="A partition's open part is written once it holds this many events.",
    )
    flush_interval_s: float = Field(
        60.0,
        gt=0,
        description="...or once its first event has waited this long, seconds (whichever "
        "comes first); bounds how much is re-read after a crash.",
    )
    max_buffered_records: int = Field(
        200_000,
        ge=1,
        description="Events buffered over all partitions at most (about 0.75 KiB each in "
        "memory); past it the largest open part is written at once.",
    )
    retention_interval_s: float = Field(
        3600.0, gt=0, description="How often expired day folders are looked for, seconds."
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the archiver's Prometheus `/metrics` (0: not served).",
    )
