"""Registry of sequence-encoder architectures (torch; training/export only).

An architecture is one module in this package: a subclass of
`models.network.Recommender` that supplies the sequence encoder (`build_encoder`,
`encode`, `encode_last`) and registers itself under a name::

    @register_architecture("gru4rec")
    class GRU4Rec(Recommender):
        ...

Every module here is imported on the first lookup, so a new file is all it takes:
``recstream train --arch NAME`` trains it, checkpoints record the name
(`TrainConfig.arch`), `models.checkpoint.load_checkpoint` rebuilds the right class,
and export records it in metadata.json. The item table, side features, similarity
scoring, losses and the serving wrapper (`models.network.ServingRecommender`) are
shared; ``tests/models/test_architectures.py`` runs the same export-parity tests
on every registered architecture. Checkpoints from before the registry are
`DEFAULT_ARCH`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from models.metadata import DEFAULT_ARCH
from models.network import Recommender

if TYPE_CHECKING:
    import torch

    from models.config import TrainConfig

__all__ = [
    "DEFAULT_ARCH",
    "architecture_names",
    "build_network",
    "get_architecture",
    "register_architecture",
]

_R = TypeVar("_R", bound=type[Recommender])

_REGISTRY: dict[str, type[Recommender]] = {}
_discovered = False


def register_architecture(name: str) -> Callable[[_R], _R]:
    """Class decorator: register a `Recommender` subclass under `name`.

    Raises:
        ValueError: If another class already has the name.
    """

    def decorate(cls: _R) -> _R:
        if _REGISTRY.get(name, cls) is not cls:
            raise ValueError(f"architecture {name!r} is already registered")
        cls.arch = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _discover() -> None:
    """Import every module of this package once (each registers what it defines)."""
    global _discovered
    if not _discovered:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True


def architecture_names() -> tuple[str, ...]:
    """Names of all registered architectures, sorted."""
    _discover()
    return tuple(sorted(_REGISTRY))


def get_architecture(name: str) -> type[Recommender]:
    """The class registered under `name`.

    Raises:
        ValueError: If no architecture has that name.
    """
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; known: {', '.join(architecture_names())}"
        ) from None


def build_network(
    config: TrainConfig,
    n_items: int,
    *,
    item_attributes: torch.Tensor | None = None,
    n_attributes: int = 0,
    item_content: torch.Tensor | None = None,
) -> Recommender:
    """A freshly initialised network of `config.arch` and `config`'s shape over `n_items`.

    Args:
        config: Architecture, shape and dropout.
        n_items: Catalog size (excluding padding).
        item_attributes: Optional [n_items + 1, A] attribute indices.
        n_attributes: Attribute vocabulary size (with `item_attributes`).
        item_content: Optional [n_items + 1, C] content vectors.

    Returns:
        The network (training mode).
    """
    return get_architecture(config.arch)(
        n_items,
        max_len=config.max_len,
        dim=config.dim,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        dropout=config.dropout,
        item_attributes=item_attributes,
        n_attributes=n_attributes,
        item_content=item_content,
        similarity=config.similarity,
        temperature=config.temperature,
        repeat_head=config.repeat_head,
        transition_head=config.transition_head,
    )
