"""Process-wide tuning, applied once by each host after start-up."""

from __future__ import annotations

import contextlib
import gc
import importlib
import threading
from collections.abc import Iterable

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


def warm_up(modules: Iterable[str], *, freeze: bool = True) -> threading.Thread:
    """Import `modules` on a background thread: what the first request needs and the start-up
    does not (aiohttp, the Azure SDKs of the configured credentials). Every scale-out pays the
    start-up's imports before it can take a request; these then load while the host finishes
    starting. A request that comes first waits for the rest of the import (Python's import
    lock), never for a second one. Then what the imports created is frozen as `tune_gc` froze
    the start-up's objects (with it, whatever requests hold at that instant: the first second's,
    a few objects at most, never collected)."""

    def run() -> None:
        for name in modules:
            # A module that fails here fails again for the request that needs it, which reports.
            with contextlib.suppress(Exception):
                importlib.import_module(name)
        if freeze:
            # What they created lives as long as the process, like the rest of the start-up: out
            # of the collector's sight (else every full collection walks it).
            gc.freeze()

    thread = threading.Thread(target=run, name="gateway-warm-up", daemon=True)
    thread.start()
    return thread
