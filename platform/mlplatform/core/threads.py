"""Independent numpy work on the driver's cores: sorts, partitions and bincounts release the GIL.

Profiles, natural variability and drift summaries compute one column (or one window) at a time, each
independent of the others; threads run them side by side without copying the rows to another
process. The results come back in the items' order, so they are the same as a loop's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def thread_count() -> int:
    """The cores this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def map_in_threads(work: Callable[[Item], Result], items: Iterable[Item]) -> list[Result]:
    """`[work(item) for item in items]`, the items spread over `thread_count()` threads."""
    listed = list(items)
    threads = min(thread_count(), len(listed))
    if threads <= 1:
        return [work(item) for item in listed]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mlplatform-numpy") as pool:
        return list(pool.map(work, listed))
