"""Process-wide tuning, applied once by each host after start-up."""

from __future__ import annotations

import gc

#: Container allocations between two collections of the youngest generation (Python's default
#: is 700). The older generations keep their default ratios.
YOUNG_GENERATION_THRESHOLD = 10_000


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path.

    A request allocates a few hundred short-lived containers, nearly all freed by reference
    counting; at the default threshold a collection runs every few requests and, under load,
    walks thousands of live request objects each time (bench/README.md has the figures).
    What start-up created (modules, configuration, clients) lives as long as the process:
    `gc.freeze` moves it out of the collector's sight for good.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)
