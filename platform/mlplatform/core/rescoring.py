"""Which partitions a change of champion affects, and which change is the latest. No Dagster.

A drift verdict compares the predictions of its window with the reference profile of the champion;
predictions by another version leave prediction drift and performance unjudged (core.drift_windows).
So after a promotion or a rollback, every partition whose latest predictions are not by the new
champion is re-scored (with its drift verdict), from the first such partition to the last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChampionEvent:
    """A change of champion seen in the event log: a promotion or a rollback."""

    storage_id: int
    version: int
    how: str  # "evaluation" (promotion or re-check) or "rollback"


def champion_version(value: Any) -> int | None:
    """A champion version from metadata ("none" or missing: no champion)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def latest_change(changes: Iterable[ChampionEvent]) -> ChampionEvent | None:
    return max(changes, key=lambda change: change.storage_id, default=None)


def partitions_to_rescore(
    latest_versions: Mapping[str, int | None], champion: int, order: Callable[[str], Any]
) -> list[str]:
    """Partitions whose latest predictions are not by `champion` (None: unknown version), in `order`."""
    return sorted((key for key, version in latest_versions.items() if version != champion), key=order)


def rescore_range(keys: Sequence[str]) -> tuple[str, str] | None:
    """The one range a single run re-scores: first to last affected partition (None: nothing to do)."""
    return (keys[0], keys[-1]) if keys else None
