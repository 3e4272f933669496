"""Checks of single loader options, run when params are validated.

A loader's keyword arguments are the options ``datasets.<name>.prepare`` may set
(:func:`pipeline.data.registry.resolve_options`). Where an option's value needs more than its
type to be valid (a coarse map must fit the dataset's classes), the loader declares a check::

    @option_checks(coarse_map=COARSE_MAPS.check)
    def load_mnist(root, ..., coarse_map="halves"): ...

``resolve_options`` runs each check on the resolved value; a check raises ValueError, which the
validate and download stages report as a ParamsError under ``datasets.<name>.prepare``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
ATTRIBUTE = "option_checks"


def option_checks(**checks: Callable[[Any], None]) -> Callable[[F], F]:
    """Attach ``{option: check(value)}`` to a loader (kept by ``functools.wraps``)."""
    def attach(loader: F) -> F:
        setattr(loader, ATTRIBUTE, dict(checks))
        return loader
    return attach


def checks_of(loader: Callable[..., Any]) -> Mapping[str, Callable[[Any], None]]:
    """The option checks attached to ``loader`` (through any ``functools.partial``); {} if none."""
    while isinstance(loader, functools.partial):
        loader = loader.func
    return getattr(loader, ATTRIBUTE, {})


__all__ = ["checks_of", "option_checks"]
