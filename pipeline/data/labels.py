"""Label roles derived from other labels: coarse from fine (coarse maps), group from (y, attribute).

Coarse maps (``datasets.<name>.prepare.coarse_map``, METHOD.md section 5). A coarse map gives
each of a dataset's ``n`` fine classes (ids ``0..n-1``) its coarse class (ids ``0..K-1``):

- ``halves``: fine ``< n/2`` -> 0, else 1 (coarse names ``"0-4"``, ``"5-9"`` for 10 classes);
  the default of digits, spurious digits and MNIST;
- ``parity``: even fine ids -> 0 (``"even"``), odd -> 1 (``"odd"``);
- a dataset's own named maps, built by its loader from the dataset's files
  (CIFAR-10 ``vehicles_animals``, CIFAR-100 ``superclasses``: their defaults);
- an explicit list of ``n`` coarse ids, one per fine class in fine-id order: ids ``0..K-1``,
  every one used, ``K >= 2``; coarse names ``"coarse 0"``, ``"coarse 1"``, ...

:class:`CoarseMaps` is what a dataset offers; its :meth:`~CoarseMaps.check` runs when params are
validated (through :func:`pipeline.data.options.option_checks` on the loader) and again inside
:meth:`~CoarseMaps.resolve`, which the loader calls, so a wrong map fails the same way in both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.schema import did_you_mean

HALVES = "halves"
PARITY = "parity"
KEY = "coarse_map"


@dataclass(frozen=True)
class CoarseMap:
    """A fine -> coarse map: ``fine_to_coarse`` (n_fine,) int64 and the K coarse class names."""

    fine_to_coarse: np.ndarray
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "fine_to_coarse", np.asarray(self.fine_to_coarse, dtype=np.int64))
        object.__setattr__(self, "names", tuple(self.names))

    def __call__(self, fine: np.ndarray) -> np.ndarray:
        """The coarse labels (int64) of fine labels ``fine``."""
        return self.fine_to_coarse[fine]

    @property
    def n_coarse(self) -> int:
        return len(self.names)


def _id_range(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def halves(n_fine: int) -> CoarseMap:
    """Fine ids below ``n_fine / 2`` -> 0, the rest -> 1; names are the two id ranges ("0-4", "5-9")."""
    first_upper = (n_fine + 1) // 2  # the smallest fine id >= n_fine / 2
    return CoarseMap((2 * np.arange(n_fine) >= n_fine).astype(np.int64),
                     (_id_range(0, first_upper - 1), _id_range(first_upper, n_fine - 1)))


def parity(n_fine: int) -> CoarseMap:
    """Even fine ids -> 0 ("even"), odd -> 1 ("odd")."""
    return CoarseMap(np.arange(n_fine, dtype=np.int64) % 2, ("even", "odd"))


def explicit(fine_to_coarse: Sequence[int]) -> CoarseMap:
    """A map given as a list (already checked): coarse names ``"coarse 0"``, ``"coarse 1"``, ..."""
    ids = np.asarray([int(c) for c in fine_to_coarse], dtype=np.int64)
    return CoarseMap(ids, tuple(f"coarse {k}" for k in range(int(ids.max()) + 1)))


# The named maps every dataset offers, from its number of fine classes alone.
GENERIC_MAPS: dict[str, Callable[[int], CoarseMap]] = {HALVES: halves, PARITY: parity}


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class CoarseMaps:
    """The coarse maps a dataset offers for its ``n_fine`` fine classes.

    ``own`` names the maps its loader builds from the dataset's files (passed to :meth:`resolve`);
    ``n_coarse`` is the one number of coarse classes the dataset's task allows (None: any K >= 2).
    """

    dataset: str
    n_fine: int
    default: str = HALVES
    own: tuple[str, ...] = field(default=())
    n_coarse: int | None = None

    @property
    def named(self) -> tuple[str, ...]:
        """Every named map of the dataset, its own first."""
        return (*self.own, *GENERIC_MAPS)

    def _offer(self) -> str:
        return (f"named maps: {', '.join(self.named)}; or a list of {self.n_fine} coarse class ids, one per fine "
                "class in fine-id order")

    def check(self, value: Any) -> None:
        """Raise ValueError, with a message starting ``coarse_map:``, unless ``value`` is one of the maps."""
        if isinstance(value, str):
            if value not in self.named:
                raise ValueError(f"{KEY}: {value!r} is not a coarse map of {self.dataset}"
                                 f"{did_you_mean(value, self.named)}; {self._offer()}")
            if value in GENERIC_MAPS:
                self._check_count(value, GENERIC_MAPS[value](self.n_fine).n_coarse)
            return
        if isinstance(value, (bytes, Mapping)) or not isinstance(value, (Sequence, np.ndarray)):
            raise ValueError(f"{KEY}: {value!r} is neither a named map nor a list; {self._offer()}")
        items = list(value)
        wrong = [(i, v) for i, v in enumerate(items) if not _is_int(v)]
        if wrong:
            i, v = wrong[0]
            raise ValueError(f"{KEY}: item {i} is {v!r}; coarse class ids are integers 0..K-1 "
                             f"({len(wrong)} item(s) are not integers)")
        if len(items) != self.n_fine:
            raise ValueError(f"{KEY}: the list has {len(items)} items but {self.dataset} has {self.n_fine} fine "
                             "classes; it needs one coarse class id per fine class, in fine-id order")
        ids = sorted({int(v) for v in items})
        if ids[0] < 0:
            raise ValueError(f"{KEY}: coarse class id {ids[0]} is negative; ids are 0..K-1")
        missing = sorted(set(range(ids[-1] + 1)) - set(ids))
        if missing:
            raise ValueError(f"{KEY}: coarse class ids {missing} are unused but {ids[-1]} is; ids must be "
                             f"0..K-1 with every one used (here K = {len(ids)} would need ids 0..{len(ids) - 1})")
        if len(ids) < 2:
            raise ValueError(f"{KEY}: every fine class is in coarse class {ids[0]}; a coarse task needs at least "
                             "2 coarse classes")
        self._check_count("the list", len(ids))

    def _check_count(self, what: str, k: int) -> None:
        if self.n_coarse is not None and k != self.n_coarse:
            raise ValueError(f"{KEY}: {what} makes {k} coarse classes; {self.dataset} needs exactly "
                             f"{self.n_coarse} (its task label is the coarse class)")

    def resolve(self, value: Any, own: Mapping[str, CoarseMap] | None = None) -> CoarseMap:
        """The map ``value`` names or lists, after :meth:`check`; ``own`` holds the dataset's own maps."""
        self.check(value)
        if isinstance(value, str):
            if value in self.own:
                built = (own or {})[value]
                if len(built.fine_to_coarse) != self.n_fine:
                    raise ValueError(f"{self.dataset}: map {value!r} covers {len(built.fine_to_coarse)} fine "
                                     f"classes, not {self.n_fine}")
                self._check_count(repr(value), built.n_coarse)
                return built
            return GENERIC_MAPS[value](self.n_fine)
        return explicit(value)


# --------------------------------------------------------------------------- worst-group labels


def group_labels(y: np.ndarray, attribute: np.ndarray, n_attributes: int = 2) -> dict[str, np.ndarray]:
    """The worst-group label roles: y, attribute and group = y * n_attributes + attribute."""
    y, attribute = y.astype(np.int64), attribute.astype(np.int64)
    return {"y": y, "attribute": attribute, "group": y * n_attributes + attribute}


__all__ = ["GENERIC_MAPS", "HALVES", "PARITY", "CoarseMap", "CoarseMaps", "explicit", "group_labels", "halves",
           "parity"]
