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
    """Keep the cyclic garbage collector off the request path; called once the start-up's
    imports are done.

    A request allocates a few hundred short-lived containers, nearly all freed by reference
    counting; at the default threshold a collection runs every few requests and, under load,
    walks thousands of live request objects each time (bench/README.md has the figures).
    What the imports created (modules, classes, models) lives as long as the process:
    `gc.freeze` moves it out of the collector's sight at once. The warm-up's thread (`warm_up`)
    later frees the start-up's little garbage (about a thousand cycles) and freezes what the
    rest of the start-up created (configuration, clients), off the start-up's path: that full
    collection alone took 17–20 ms. `function_app.py` imports with the collector off, which
    this turns back on: about 100,000 objects are created then and nearly all of them stay, so
    collecting during the import (35–40 ms of each cold start) would only walk them again and
    again.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)
    gc.enable()


def warm_up(modules: Iterable[str], *, freeze: bool = True) -> threading.Thread:
    """Import `modules` on a background thread: what the first request needs and the start-up
    does not (aiohttp, the Azure SDKs of the configured credentials, the Responses API's
    models). Every scale-out pays the start-up's imports before it can take a request; these
    then load while the host finishes starting. A request that comes first waits for the rest
    of the import (Python's import lock), never for a second one. Then the start-up's garbage
    is collected (one full collection, 20–25 ms, which a request arriving then waits for) and
    what the start-up and the imports created is frozen (with it, whatever requests hold at
    that instant: the first second's, a few objects at most, never collected)."""

    def run() -> None:
        for name in modules:
            # A module that fails here fails again for the request that needs it, which reports.
            with contextlib.suppress(Exception):
                importlib.import_module(name)
        if freeze:
            # What start-up and the imports created lives as long as the process: out of the
            # collector's sight (else every full collection walks it), its garbage freed first.
            gc.unfreeze()
            gc.collect()
            gc.freeze()

    thread = threading.Thread(target=run, name="gateway-warm-up", daemon=True)
    thread.start()
    return thread
