"""The credential cache: keys and tokens by name, fetched once at a time, kept until they expire,
and served stale for a while when their source is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from .errors import CredentialUnavailableError
from .logs import get_logger

log = get_logger("gateway.credentials")

#: After a failed refresh, how long a stale value is served before the source is asked again.
OUTAGE_RETRY_S = 10.0


@dataclass(frozen=True, slots=True)
class Expiring:
    """A fetched value: fresh until `refresh_at`, still usable until `usable_until` (monotonic
    seconds) if fetching a new one fails because its source is down."""

    value: str
    refresh_at: float
    usable_until: float


Fetch = Callable[[str], Awaitable[Expiring]]


class ExpiringCache:
    """Values by name, fetched by `fetch` once per name at a time, reused until they expire.

    Any number of concurrent misses for one name share one fetch. When a refresh fails with an
    outage (`CredentialUnavailableError.outage`), the previous value keeps serving, with a
    warning, until its `usable_until`; other failures (secret missing, access denied) are raised.
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_stale: Callable[[str, CredentialUnavailableError], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._on_stale = on_stale
        self._entries: dict[str, Expiring] = {}
        self._inflight: dict[str, asyncio.Future[Expiring]] = {}

    def now(self) -> float:
        return self._clock()

    def fresh(self, name: str) -> str | None:
        """The value of `name` if one is cached and fresh (nothing fetched), else None."""
        entry = self._entries.get(name)
        return entry.value if entry is not None and self._clock() < entry.refresh_at else None

    async def get(self, name: str) -> str:
        value = self.fresh(name)
        if value is not None:
            return value
        try:
            return (await self._shared_fetch(name)).value
        except CredentialUnavailableError as exc:
            entry = self._entries.get(name)
            now = self._clock()
            if not (exc.outage and entry is not None and now < entry.usable_until):
                raise
            log.warning(
                "%s; serving the cached value for %s more seconds at most",
                exc.message,
                int(entry.usable_until - now),
            )
            self._entries[name] = replace(entry, refresh_at=min(now + OUTAGE_RETRY_S, entry.usable_until))
            if self._on_stale is not None:
                self._on_stale(name, exc)
            return entry.value

    def invalidate(self, name: str, value: str) -> None:
        """Forget `value` (the endpoint refused it): the next `get` fetches a new one. A newer
        value, fetched meanwhile by a concurrent request, is kept."""
        entry = self._entries.get(name)
        if entry is not None and entry.value == value:
            del self._entries[name]

    def _shared_fetch(self, name: str) -> asyncio.Future[Expiring]:
        future = self._inflight.get(name)
        if future is None:
            future = asyncio.ensure_future(self._fetch_and_store(name))
            self._inflight[name] = future
            future.add_done_callback(lambda done: self._settle(name, done))
        # A caller that goes away must not cancel the fetch the others wait for.
        return asyncio.shield(future)

    def _settle(self, name: str, done: asyncio.Future[Expiring]) -> None:
        self._inflight.pop(name, None)
        if not done.cancelled():
            done.exception()  # retrieved here too, in case every waiter went away

    async def _fetch_and_store(self, name: str) -> Expiring:
        entry = await self._fetch(name)
        self._entries[name] = entry
        return entry
