"""Settings: the composition root's only source of configuration.

Every setting is one environment variable with the ``RECSTREAM_`` prefix
(``RECSTREAM_KAFKA_BOOTSTRAP_SERVERS=...``), or a line of a ``.env`` file. The
settings are nested: :class:`Settings` holds a whole :class:`~streams.config.StreamConfig`
(the stream layer's groups, where their defaults and meanings live) and adds what
only a deployment needs (model, execution provider, event loop, logging). The
variable of a nested field is its *flat name*, the group's ``env_prefix`` + the field
name, so ``stream.kafka.bootstrap_servers`` is ``RECSTREAM_KAFKA_BOOTSTRAP_SERVERS``.

Programs that start workers (the lab, the demo, the benchmarks) build validated
``Settings`` too, with :meth:`Settings.replace` (flat names; a misspelt one is an
error), and hand them to a child process with :meth:`Settings.to_env`.
Nothing else in recstream reads the environment for its own settings.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from deploy.archive_config import ArchiveConfig
from models.scorer import Provider
from streams.config import StreamConfig, internal_field

__all__ = ["ENV_PREFIX", "FlatField", "Settings", "markdown_table"]

#: Prefix of every recstream environment variable.
ENV_PREFIX = "RECSTREAM_"

EventLoop = Literal["uvloop", "asyncio"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Settings(BaseSettings):
    """recstream configuration (env prefix ``RECSTREAM_``; flat names, nested fields)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="forbid", frozen=True
    )

    stream: StreamConfig = Field(default_factory=StreamConfig)
    retention_hours: int = Field(
        168, ge=1, description="Retention of input, output and DLQ topics."
    )
    model_dir: Path = Field(
        Path("var/models/current"),
        description="Model directory (`model.onnx` + `metadata.json`) or a model store root "
        "(its `CURRENT` version is served and hot-reloaded when `CURRENT` changes).",
    )
    text_encoder_dir: Path | None = Field(
        None,
        description="An exported text encoder (`recstream text-encoder ...`: `encoder.onnx`, "
        "`tokenizer.json`, `text_encoder.json`), loaded once per worker: search queries "
        "become intents and catalog text is embedded for the model. Unset: searches are "
        "accepted, counted and acked without a list; catalog text is not embedded.",
    )
    text_encoder_threads: int = Field(
        1,
        ge=0,
        description="onnxruntime intra-op threads of the text encoder (0 = all cores); 1: "
        "catalog embedding in its thread leaves the other cores to scoring and the loop.",
    )
    provider: Provider = Field(
        "auto",
        description="onnxruntime provider: `auto` (CUDA if it really works, else CPU), "
        "`cuda` (fail if unusable), `cpu`.",
    )
    intra_op_threads: int = Field(
        1,
        ge=0,
        description="onnxruntime intra-op threads (0 = onnxruntime's default, all cores); "
        "1 leaves the other cores to the event loop and librdkafka.",
    )
    event_loop: EventLoop = Field(
        "uvloop",
        description="Event loop of the worker: `uvloop` (libuv; less CPU per event and per "
        "wake-up) or `asyncio` (the standard library's loop).",
    )
    gil_switch_interval_ms: float = Field(
        0.5, ge=0, description="Python GIL switch interval in the worker (0 = Python's 5 ms)."
    )
    gc_threshold: int = Field(
        10_000,
        ge=0,
        description="Allocations between the worker's young-generation garbage "
        "collections; objects alive after start-up (model, catalog) are frozen out of "
        "them (0 = Python's defaults: 700, nothing frozen).",
    )
    log_level: LogLevel = Field(
        "INFO", description="Log level. Raw event payloads are never logged at INFO."
    )
    log_json: bool = Field(False, description="One JSON object per log line.")
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)

    def __init__(self, **values: Any) -> None:
        """Settings from the environment, overridden by ``values`` (flat names).

        ``Settings(partitions=6)`` sets ``stream.partitions``; a whole group can be
        passed too (``Settings(stream=StreamConfig(...))``). pydantic-settings'
        own options (``_env_file=None``) pass through.
        """
        options = {k: v for k, v in values.items() if k.startswith("_")}
        flat = {k: v for k, v in values.items() if not k.startswith("_")}
        super().__init__(**options, **_nest(flat))

    @model_validator(mode="after")
    def _erasure_markers_outlive_the_inputs(self) -> Settings:
        # An erased user's marker keeps replayed older events out; once it is gone, an
        # event still in an input topic could bring the user back.
        marker_hours = self.stream.data_privacy.erasure_marker_days * 24
        if marker_hours < self.retention_hours:
            raise ValueError(
                f"RECSTREAM_PRIVACY_ERASURE_MARKER_DAYS ({marker_hours / 24:g} days) must be at "
                f"least the input retention RECSTREAM_RETENTION_HOURS ({self.retention_hours} h)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the environment, then ``.env``; flat names in both."""
        return (
            init_settings,
            _FlatSource(settings_cls, getattr(env_settings, "env_vars", {})),
            _FlatSource(settings_cls, getattr(dotenv_settings, "env_vars", {})),
        )

    @classmethod
    def defaults(cls) -> Settings:
        """The defaults alone: no environment, no ``.env`` file."""
        return cls.model_validate({})

    # -- flat names ------------------------------------------------------------------

    @classmethod
    def fields(cls) -> dict[str, FlatField]:
        """Every setting by flat name (``kafka_bootstrap_servers``...), in table order."""
        return _FIELDS

    @classmethod
    def env_names(cls) -> set[str]:
        """Every ``RECSTREAM_*`` variable a deployment may set."""
        return {f.env for f in _FIELDS.values()}

    def get(self, name: str) -> Any:
        """The value of a setting by flat name (``settings.get("max_batch")``)."""
        value: Any = self
        for part in _field(name).path:
            value = getattr(value, part)
        return value

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with settings changed by flat name.

        Unlike ``model_copy(update=...)``, every value is validated and an unknown
        name raises (with the closest known names), so a typo cannot pass silently.
        """
        data = self.model_dump()
        for name, value in changes.items():
            _put(data, _field(name).path, value)
        return type(self).model_validate(data)

    def to_env(self) -> dict[str, str]:
        """``RECSTREAM_*`` variables that reproduce these settings in another process.

        Secrets are included (a child process needs them): never log the result.
        """
        env = {}
        for name, spec in _FIELDS.items():
            value = self.get(name)
            if value is None:
                continue
            env[spec.env] = _env_value(value)
        return env

    @classmethod
    def unknown_env(cls, environ: Mapping[str, str]) -> list[str]:
        """``RECSTREAM_*`` variables that are no setting, each with the closest names.

        The worker and the archiver log these at start-up: a misspelt variable would
        otherwise be ignored without a word. Variables of the test and lab harness
        (``RECSTREAM_TEST_*``, ``RECSTREAM_LIBRDKAFKA``) are not settings and not listed.
        """
        known = cls.env_names()
        out = []
        for key in sorted(environ):
            upper = key.upper()
            if not upper.startswith(ENV_PREFIX) or upper in known:
                continue
            if upper.startswith(f"{ENV_PREFIX}TEST_") or upper in _HARNESS_VARIABLES:
                continue
            close = difflib.get_close_matches(upper, sorted(known), n=2)
            out.append(f"{key} (did you mean {' or '.join(close)}?)" if close else key)
        return out

    # -- derived -----------------------------------------------------------------------

    def client_config(self) -> dict[str, str]:
        """librdkafka (confluent-kafka) connection settings for CLI clients."""
        return self.stream.kafka.client_config()


@dataclass(frozen=True, slots=True)
class FlatField:
    """One setting: its flat name, environment variable and place in the nesting."""

    name: str
    env: str
    path: tuple[str, ...]
    info: FieldInfo

    @property
    def default(self) -> Any:
        """The default value (a ``default_factory`` is called)."""
        return self.info.get_default(call_default_factory=True)


def _walk(model: type[BaseModel], prefix: str, path: tuple[str, ...]) -> Iterator[FlatField]:
    for name, info in model.model_fields.items():
        if internal_field(info):
            continue
        group = info.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            sub_prefix: str = getattr(group, "env_prefix", "")
            yield from _walk(group, prefix + sub_prefix, (*path, name))
            continue
        flat = prefix + name
        yield FlatField(flat, ENV_PREFIX + flat.upper(), (*path, name), info)


def _flat_fields() -> dict[str, FlatField]:
    fields: dict[str, FlatField] = {}
    for spec in _walk(Settings, "", ()):
        if spec.name in fields:
            raise TypeError(
                f"two settings share the name {spec.env}: {fields[spec.name].path} and "
                f"{spec.path}; give one group another env_prefix"
            )
        fields[spec.name] = spec
    return fields


_FIELDS: dict[str, FlatField] = {}

#: RECSTREAM_* variables that belong to the lab, not to Settings.
_HARNESS_VARIABLES = {"RECSTREAM_LIBRDKAFKA"}


def _field(name: str) -> FlatField:
    spec = _FIELDS.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(_FIELDS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown setting {name!r}{hint}")
    return spec


def _put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        child = data.get(part)
        if isinstance(child, BaseModel):
            child = child.model_dump()
        elif not isinstance(child, dict):
            child = {}
        data[part] = child = dict(child)
        data = child
    data[path[-1]] = value


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat names -> the nested dictionary pydantic validates (top-level fields as is)."""
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        if name in Settings.model_fields and name not in _FIELDS:
            nested[name] = value  # a whole group, e.g. stream=StreamConfig(...)
        else:
            _put(nested, _field(name).path, value)
    return nested


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _FlatSource(PydanticBaseSettingsSource):
    """Reads ``RECSTREAM_<flat name>`` variables (already lower-cased by pydantic-settings)."""

    def __init__(self, settings_cls: type[BaseSettings], env_vars: Mapping[str, str | None]):
        super().__init__(settings_cls)
        self._vars = env_vars

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: :meth:`__call__` maps every variable at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """The nested values of every known variable that is set."""
        prefix = ENV_PREFIX.lower()
        found: dict[str, Any] = {}
        for key, value in self._vars.items():
            key = key.lower()
            if value is None or not key.startswith(prefix):
                continue
            spec = _FIELDS.get(key[len(prefix) :])
            if spec is not None:  # other RECSTREAM_* variables (tests, tools) are not ours
                _put(found, spec.path, value)
        return found


_FIELDS.update(_flat_fields())


def markdown_table() -> str:
    """The README's configuration table, generated from the settings themselves."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for spec in _FIELDS.values():
        default = spec.default
        if default is None:
            shown = "–"
        elif isinstance(default, SecretStr):
            shown = "(secret)"
        elif default == "":
            shown = "(empty)"
        else:
            shown = f"`{_env_value(default)}`"
        description = (spec.info.description or "").replace("|", "\\|")
        rows.append(f"| `{spec.env}` | {shown} | {description} |")
    return "\n".join(rows) + "\n"
