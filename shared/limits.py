"""Limits per caller (`callers.limits`): requests and tokens per minute, tokens per day.

Each limit is a GCRA bucket (the generic cell rate algorithm, a token bucket kept as one
timestamp): a caller may spend its whole minute at once, then it refills continuously at
limit/period. Unlike fixed windows there is no boundary where twice the limit passes in a
moment. A bucket is its "theoretical arrival time" (TAT): now + the time the caller's debt takes
to drain; a request costing `c` of a limit `L` per period `P` is admitted if
`max(TAT, now) + c·P/L - now <= P`.

Admission checks every bucket of the caller and takes from all of them or none, in one step of
the store (one Redis round trip: a Lua script). Tokens are reserved from an estimate of the
prompt (the request body's length / 4) and settled when the request ends with the endpoint's
reported usage; `/score` endpoints report none, so their answer's length / 4 stands in.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .callers import Caller, LimitsSettings, LimitValues, StoreSettings
from .errors import CallerLimitError, LimitStoreUnavailableError
from .logs import get_logger
from .observe import Exchange, Observer

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

log = get_logger("gateway.limits")

MINUTE_MS = 60_000
DAY_MS = 86_400_000
#: What every answer of a limited caller carries (OpenAI's names).
RATE_LIMIT_HEADERS = tuple(
    f"x-ratelimit-{what}-{kind}"
    for kind in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")
)
#: Characters per token of the estimates (prompt before the call, `/score` answers after).
CHARS_PER_TOKEN = 4
#: How recent a caller's last admission must be for its next request to start early.
HEADROOM_FRESH_S = 1.0
#: Callers remembered for `has_headroom`; past it they are all forgotten (their next requests
#: wait for their admissions, nothing worse).
MAX_CALLERS_SEEN = 10_000


def estimate_tokens(chars: int) -> int:
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


@dataclass(frozen=True, slots=True)
class Bucket:
    name: str  # "requests", "tokens", "tokens_day"
    period_ms: int
    limit: int
    #: Milliseconds one unit (a request, a token) takes to drain from the bucket.
    ms_per_unit: float = field(init=False)
    #: Its `x-ratelimit-*` headers' names: limit, remaining, reset.
    header_names: tuple[str, str, str] = field(init=False)

    def __post_init__(self) -> None:
        kind = "requests" if self.name == "requests" else "tokens"
        names = tuple(f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset"))
        object.__setattr__(self, "ms_per_unit", self.period_ms / self.limit)
        object.__setattr__(self, "header_names", names)


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    #: Per bucket: the debt (ms until the bucket is full again) before this request ...
    debts_before_ms: list[float]
    #: ... and with it (over the period: this bucket refuses it).
    debts_after_ms: list[float]


class Store(Protocol):
    #: Whether an admission waits on I/O (and so runs under `store.timeout_s`).
    remote: bool

    async def admit(self, keys: list[str], buckets: list[Bucket], costs: list[int]) -> Decision: ...

    def settle(self, keys: list[str], buckets: list[Bucket], deltas: list[int]) -> None:
        """Add `deltas` to the buckets: now, or soon (a shared store batches them)."""

    async def aclose(self) -> None: ...


class MemoryStore:
    """The buckets of this process only (the local server, one instance, tests)."""

    remote = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._admissions = 0

    def _now_ms(self) -> float:
        return self._clock() * 1000

    async def admit(self, keys: list[str], buckets: list[Bucket], costs: list[int]) -> Decision:
        now = self._now_ms()
        self._admissions += 1
        if self._admissions % 1024 == 0:
            self._tats = {k: tat for k, tat in self._tats.items() if tat > now}
        tats = self._tats
        admitted = True
        before: list[float] = []
        after: list[float] = []
        for key, bucket, cost in zip(keys, buckets, costs, strict=True):
            debt = tats.get(key, now) - now
            if debt < 0:
                debt = 0.0
            before.append(debt)
            debt += cost * bucket.ms_per_unit
            after.append(debt)
            if debt > bucket.period_ms:
                admitted = False
        if admitted:
            for key, debt in zip(keys, after, strict=True):
                tats[key] = now + debt
        return Decision(admitted, before, after)

    def settle(self, keys: list[str], buckets: list[Bucket], deltas: list[int]) -> None:
        now = self._now_ms()
        for key, bucket, delta in zip(keys, buckets, deltas, strict=True):
            tat = max(self._tats.get(key, now), now) + delta * bucket.ms_per_unit
            if tat > now:
                self._tats[key] = tat
            else:
                self._tats.pop(key, None)

    async def aclose(self) -> None:
        pass


# The store's own clock (TIME), so every instance agrees; keys expire once their bucket is full.
# ARGV[1]: period, limit, cost and a settlement of each key, comma-separated (redis-py encodes and
# parses every element of a command in Python: one argument and one string back cost less). The
# settlement (a former request's tokens, used minus reserved) applies first, admitted or not.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local args = {}
for value in string.gmatch(ARGV[1], '[^,]+') do args[#args + 1] = tonumber(value) end
local ok = 1
local settled, before, after = {}, {}, {}
for i = 1, #KEYS do
  local period, limit, cost, delta = args[4*i-3], args[4*i-2], args[4*i-1], args[4*i]
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  settled[i] = tat + delta * period / limit
  before[i] = math.max(settled[i], now)
  after[i] = before[i] + cost * period / limit
  if after[i] - now > period then ok = 0 end
end
local out = {ok}
for i = 1, #KEYS do
  local tat = settled[i]
  if ok == 1 then tat = after[i] end
  if tat > now then
    redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1)
  elseif args[4*i] ~= 0 then
    redis.call('DEL', KEYS[i])
  end
  out[#out + 1] = string.format('%.3f', before[i] - now)
  out[#out + 1] = string.format('%.3f', after[i] - now)
end
return table.concat(out, ',')
"""

# Settlements no admission took along: period, limit and delta of each key.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local args = {}
for value in string.gmatch(ARGV[1], '[^,]+') do args[#args + 1] = tonumber(value) end
for i = 1, #KEYS do
  local period, limit, delta = args[3*i-2], args[3*i-1], args[3*i]
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tat = tat + delta * period / limit
  if tat > now then
    redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1)
  else
    redis.call('DEL', KEYS[i])
  end
end
return 1
"""


class RedisStore:
    """Buckets shared by every instance, in Redis: one connection pool per process, one round
    trip per admission (EVALSHA of a Lua script). A request's settlement rides on its caller's
    next admission, or goes with the others pending after `SETTLE_DELAY_S` (one pipeline)."""

    remote = True
    #: How long a settlement waits for its caller's next admission before it is sent on its own.
    SETTLE_DELAY_S = 0.25
    #: How long admissions keep a connection before it goes back through the pool (which
    #: re-authenticates it after an Entra token refresh, or reconnects it if it must).
    HOLD_S = 10.0

    def __init__(self, settings: StoreSettings, environ: Mapping[str, str] = os.environ) -> None:
        import redis.asyncio as redis  # only a redis store pays for the import
        from redis.exceptions import ConnectionError, NoScriptError

        self._no_script: type[Exception] = NoScriptError
        self._connection_errors: tuple[type[Exception], ...] = (ConnectionError, OSError)

        options: dict[str, Any] = {
            # No socket timeout of redis-py's own: each admission and flush runs under an
            # asyncio.timeout of `timeout_s` (a connection cancelled mid-command is dropped),
            # and redis-py's would cost a task per command on Python 3.11 (asyncio.wait_for).
            "socket_timeout": None,
            "socket_connect_timeout": settings.timeout_s,
            "max_connections": 256,
            "retry_on_timeout": False,
        }
        auth = settings.auth
        if auth.type == "env" and auth.variable is not None:
            options["password"] = environ.get(auth.variable)
        elif auth.type == "entra":
            options["credential_provider"] = _entra_credential_provider()
        self._timeout_s = settings.timeout_s
        self._client = redis.Redis.from_url(settings.url or "", **options)
        self._pool = self._client.connection_pool
        self._admit = self._client.register_script(_ADMIT)
        self._admit_sha = self._admit.sha.encode()
        self._settle = self._client.register_script(_SETTLE)
        #: Connections the admissions hold between their commands (most recent last), each with
        #: when it was taken from the pool.
        self._held: list[tuple[AbstractConnection, float]] = []
        #: Settlements not sent yet: key -> (its bucket, tokens to add; negative gives back).
        self._pending: dict[str, tuple[Bucket, int]] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        #: Flushes and dropped connections' closing, running in the background.
        self._tasks: set[asyncio.Task[None]] = set()

    async def admit(self, keys: list[str], buckets: list[Bucket], costs: list[int]) -> Decision:
        pending = self._pending
        deltas = [pending.pop(key)[1] if key in pending else 0 for key in keys]
        argument = ",".join(
            f"{b.period_ms},{b.limit},{cost},{delta}"
            for b, cost, delta in zip(buckets, costs, deltas, strict=True)
        )
        try:
            out = await self._run_admit(keys, argument)
        except BaseException:
            self.settle(keys, buckets, deltas)  # not applied: kept for the flush
            raise
        ok, *numbers = (float(x) for x in out.split(b","))
        return Decision(ok == 1, numbers[0::2], numbers[1::2])

    async def _run_admit(self, keys: list[str], argument: str) -> bytes:
        """EVALSHA of the admission script on a held connection: redis-py's connection and reply
        parser, without its client's work around each command (the pool's lock, health and
        observability hooks, retries), which cost this core about 60 µs per admission
        (bench/README.md). A held connection that turns out broken (the server restarted or
        failed over) drops every connection, and the admission runs once more on a new one (as
        redis-py's own retry would: if the server ran it before its connection broke, that
        request is counted twice)."""
        if self._held:
            connection, taken = self._held.pop()
            try:
                return await self._evalsha(connection, taken, keys, argument)
            except self._connection_errors:  # the server went away: every connection is stale
                stale, self._held = self._held, []
                for other, _ in stale:
                    self._in_background(self._drop(other))
                # The pool's idle ones too (redis-py hands them out unchecked when the server
                # may send maintenance notifications): they connect again when taken.
                await self._pool.disconnect(inuse_connections=False)
        connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        return await self._evalsha(connection, time.monotonic(), keys, argument)

    async def _evalsha(
        self, connection: AbstractConnection, taken: float, keys: list[str], argument: str
    ) -> bytes:
        """One admission on `connection`, held again afterwards. A failed or cancelled command
        drops its connection: a late reply must not answer the next command."""
        try:
            await connection.send_packed_command(
                _evalsha_command(self._admit_sha, keys, argument), check_health=False
            )
            out: bytes = await connection.read_response()
        except self._no_script:  # a flushed or failed-over server: the script loads it again
            self._held.append((connection, taken))
            return await self._admit(keys=keys, args=[argument])
        except BaseException:
            self._in_background(self._drop(connection))
            raise
        if time.monotonic() - taken < self.HOLD_S:
            self._held.append((connection, taken))
        else:
            await self._pool.release(connection)
        return out

    async def _drop(self, connection: AbstractConnection) -> None:
        await connection.disconnect(nowait=True)
        await self._pool.release(connection)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def settle(self, keys: list[str], buckets: list[Bucket], deltas: list[int]) -> None:
        for key, bucket, delta in zip(keys, buckets, deltas, strict=True):
            if delta:
                held = self._pending.get(key)
                self._pending[key] = (bucket, delta + (held[1] if held else 0))
        if self._pending and self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(self.SETTLE_DELAY_S, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_timer = None
        self._in_background(self._flush())

    async def _flush(self) -> None:
        """Every pending settlement: one script call per caller (its keys share a cluster slot),
        all in one pipeline."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        by_caller: dict[str, list[tuple[str, Bucket, int]]] = {}
        for key, (bucket, delta) in pending.items():
            by_caller.setdefault(key.rpartition(":")[0], []).append((key, bucket, delta))
        try:
            async with asyncio.timeout(self._timeout_s), self._client.pipeline(transaction=False) as pipe:
                for entries in by_caller.values():
                    argument = ",".join(f"{b.period_ms},{b.limit},{delta}" for _, b, delta in entries)
                    await self._settle(keys=[key for key, _, _ in entries], args=[argument], client=pipe)
                await pipe.execute()
        except Exception as exc:
            log.warning(
                "the limits' store failed to settle %d callers' tokens (%s)",
                len(by_caller),
                type(exc).__name__,
            )

    async def aclose(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._start_flush()
        if self._tasks:
            await asyncio.wait(self._tasks)
        held, self._held = self._held, []
        for connection, _ in held:
            await self._pool.release(connection)
        await self._client.aclose()


def _evalsha_command(sha: bytes, keys: list[str], argument: str) -> bytes:
    """`EVALSHA sha len(keys) *keys argument` as Redis reads it (RESP: an array of bulk
    strings). redis-py's `pack_command` packs any command, checking and encoding each argument
    on its way: 30-40 µs of CPU per admission, for the one command whose shape is known here."""
    parts = [sha, b"%d" % len(keys), *(key.encode() for key in keys), argument.encode()]
    return b"*%d\r\n$7\r\nEVALSHA\r\n" % (len(parts) + 1) + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in parts
    )


def _entra_credential_provider() -> Any:
    """Azure Managed Redis with Microsoft Entra authentication: tokens for the app's managed
    identity (or the developer's Azure CLI sign-in locally), refreshed before they expire."""
    from redis_entraid.cred_provider import create_from_default_azure_credential

    return create_from_default_azure_credential(("https://redis.azure.com/.default",))


@dataclass(slots=True)
class Admission:
    """One request's place in its caller's buckets: the headers its answer carries, and the
    tokens reserved until it is settled."""

    headers: dict[str, str]
    reserved: int
    keys: list[str] = field(default_factory=list)
    buckets: list[Bucket] = field(default_factory=list)
    #: What was taken from each bucket (a request larger than a bucket takes all of it).
    costs: list[int] = field(default_factory=list)
    settled: bool = False
    #: Whether the store has admitted it yet (an early start: see `CallerLimits.has_headroom`).
    decided: bool = True
    #: What the request used, when it ended before its admission was decided: settled then.
    used_early: int | None = None


class CallerLimits:
    """`callers.limits` of one process, over its store."""

    def __init__(
        self, settings: LimitsSettings, store: Store, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._down_until = 0.0
        #: Admissions served without the store (`on_store_error: allow`), for operators.
        self.store_errors = 0
        self.observer = _Settler(self)
        self._buckets: dict[frozenset[str], list[Bucket]] = {}
        #: The start of each caller's keys in the store, by its id.
        self._prefixes: dict[str, str] = {}
        #: Per caller, after its last admission here: (when, the fullest bucket's share used).
        self._last_seen: dict[str, tuple[float, float]] = {}
        #: Whether requests may start while their admission's round trip is on its way.
        self.early_start = isinstance(store, RedisStore)

    @classmethod
    def create(cls, settings: LimitsSettings, environ: Mapping[str, str] = os.environ) -> CallerLimits:
        store: Store = (
            MemoryStore() if settings.store.type == "memory" else RedisStore(settings.store, environ)
        )
        return cls(settings, store)

    def buckets(self, caller: Caller) -> list[Bucket]:
        # Only the roles `by_role` names matter: a handful of combinations, each computed once.
        roles = frozenset(caller.roles & self._settings.by_role.keys())
        buckets = self._buckets.get(roles)
        if buckets is None:
            buckets = self._buckets[roles] = self._buckets_for(roles)
        return buckets

    def _buckets_for(self, roles: frozenset[str]) -> list[Bucket]:
        values = _values_for(self._settings, roles)
        buckets = []
        if values.requests_per_minute:
            buckets.append(Bucket("requests", MINUTE_MS, values.requests_per_minute))
        if values.tokens_per_minute:
            buckets.append(Bucket("tokens", MINUTE_MS, values.tokens_per_minute))
        if values.tokens_per_day:
            buckets.append(Bucket("tokens_day", DAY_MS, values.tokens_per_day))
        return buckets

    async def admit(self, caller: Caller, prompt_tokens: int) -> Admission:
        """Take one request and `prompt_tokens` from each of the caller's buckets, or refuse
        with 429 (`CallerLimitError`). The admission goes on `caller` for the observer that
        settles it."""
        admission = self.reserve(caller, prompt_tokens)
        await self.decide(admission)
        return admission

    def reserve(self, caller: Caller, prompt_tokens: int) -> Admission:
        """What `admit` will take (not decided yet), on `caller`: a request that ends before
        its admission is decided is settled then."""
        buckets = self.buckets(caller)
        if not buckets:
            return Admission({}, 0, settled=True)
        prefix = self._prefix_of(caller)
        keys = [prefix + b.name for b in buckets]
        costs = [1 if b.name == "requests" else min(prompt_tokens, b.limit) for b in buckets]
        admission = Admission({}, prompt_tokens, keys, buckets, costs, decided=False)
        caller.admission = admission
        return admission

    def _prefix_of(self, caller: Caller) -> str:
        """`_key_prefix(caller)`, kept for each caller seen (up to `MAX_CALLERS_SEEN`)."""
        prefix = self._prefixes.get(caller.id)
        if prefix is None:
            if len(self._prefixes) >= MAX_CALLERS_SEEN:
                self._prefixes.clear()
            prefix = self._prefixes[caller.id] = _key_prefix(caller)
        return prefix

    async def decide(self, admission: Admission) -> None:
        """The store's decision on a reserved admission: its headers, or 429 (nothing taken)."""
        if admission.decided:
            return
        keys, buckets = admission.keys, admission.buckets
        try:
            decision = await self._decide(keys, buckets, admission.costs)
        except BaseException:
            admission.settled = True  # nothing was taken
            raise
        admission.decided = True
        if decision is None:
            admission.settled = True  # served without limits: nothing to settle
            return
        debts = decision.debts_after_ms if decision.admitted else decision.debts_before_ms
        admission.headers = headers = _headers(buckets, debts)
        if self.early_start:
            # How full the caller's fullest bucket is; a refused caller counts as full: its next
            # request waits for its admission.
            share = (
                max(d / b.period_ms for d, b in zip(debts, buckets, strict=True)) if decision.admitted else 1.0
            )
            self._last_seen[keys[0]] = (self._clock(), share)
            if len(self._last_seen) >= MAX_CALLERS_SEEN:
                self._last_seen.clear()  # forgetting costs the next requests a wait, nothing more
        if not decision.admitted:
            admission.settled = True
            refusing = [
                (after - b.period_ms, b)
                for b, after in zip(buckets, decision.debts_after_ms, strict=True)
                if after > b.period_ms
            ]
            wait_ms, bucket = max(refusing, key=lambda item: item[0])
            raise _over_limit(bucket, wait_ms, headers)
        if admission.used_early is not None:
            self.settle(admission, admission.used_early)

    def has_headroom(self, caller: Caller) -> bool:
        """Whether this caller's request may start before its admission is decided: with a
        shared store only, when its last admission here, less than `HEADROOM_FRESH_S` ago, left
        every bucket less than half full. Its answer still waits for the admission, and a
        refusal cancels the call (the store's count is the one that decides); the early start
        only spares a caller well inside its limits the store's round trip."""
        if not self.early_start:
            return False
        buckets = self.buckets(caller)
        if not buckets:
            return False
        seen = self._last_seen.get(self._prefix_of(caller) + buckets[0].name)
        return seen is not None and self._clock() - seen[0] < HEADROOM_FRESH_S and seen[1] < 0.5

    async def _decide(self, keys: list[str], buckets: list[Bucket], costs: list[int]) -> Decision | None:
        """The store's decision; None when it is down and `on_store_error` is `allow`."""
        if not self._store.remote:  # in this process: nothing to wait for, nothing to time out
            return await self._store.admit(keys, buckets, costs)
        if self._clock() >= self._down_until:
            try:
                # asyncio.timeout, not wait_for: no task per admission.
                async with asyncio.timeout(self._settings.store.timeout_s):
                    return await self._store.admit(keys, buckets, costs)
            except Exception as exc:  # redis' errors, a timeout, a refused connection
                self._down_until = self._clock() + self._settings.store.retry_s
                log.error(
                    "the limits' store failed (%s); for %g s requests are %s without limits",
                    type(exc).__name__,
                    self._settings.store.retry_s,
                    "served" if self._settings.on_store_error == "allow" else "refused",
                )
        if self._settings.on_store_error == "deny":
            raise LimitStoreUnavailableError(
                "The gateway cannot check callers' limits right now (its store is unreachable); retry shortly.",
                headers={"Retry-After": str(max(1, math.ceil(self._settings.store.retry_s)))},
            )
        self.store_errors += 1
        return None

    def settle(self, admission: Admission, used_tokens: int) -> None:
        """Replace the reservation with what the request used (once; once decided)."""
        if admission.settled:
            return
        if not admission.decided:
            admission.used_early = used_tokens
            return
        admission.settled = True
        keys, buckets, deltas = [], [], []
        for key, bucket, cost in zip(admission.keys, admission.buckets, admission.costs, strict=True):
            if bucket.name != "requests" and used_tokens != cost:
                keys.append(key)
                buckets.append(bucket)
                deltas.append(used_tokens - cost)
        if keys:
            self._store.settle(keys, buckets, deltas)

    async def aclose(self) -> None:
        await self._store.aclose()


class _Settler(Observer):
    """Settles each request's token reservation when it ends."""

    def __init__(self, limits: CallerLimits) -> None:
        self._limits = limits

    def request_ended(self, exchange: Exchange, error: BaseException | None) -> None:
        caller = exchange.caller
        admission = caller.admission if caller is not None else None
        if isinstance(admission, Admission) and not admission.settled:
            self._limits.settle(admission, used_tokens(exchange, admission, error))


def _key_prefix(caller: Caller) -> str:
    """The caller's keys in the store are this and a bucket's name. A hash tag keeps them in one
    slot of a Redis cluster (one script, many keys)."""
    tag = caller.id.replace("{", "(").replace("}", ")")
    return f"gateway:limits:{{{tag}}}:"


def used_tokens(exchange: Exchange, admission: Admission, error: BaseException | None) -> int:
    """The endpoint's reported total; its estimate when it reports none (`/score`); nothing for
    a request that failed before any endpoint answered; else the reservation stands."""
    usage = exchange.usage
    if usage is not None:
        total = usage.get("total_tokens")
        if isinstance(total, int):
            return total
        parts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
        if all(isinstance(p, int) for p in parts):
            return sum(parts)  # type: ignore[arg-type]
    if exchange.answer_chars is not None:
        return admission.reserved + estimate_tokens(exchange.answer_chars)
    if error is not None and exchange.endpoint is None:
        return 0
    return admission.reserved


def _values_for(settings: LimitsSettings, roles: frozenset[str]) -> LimitValues:
    """The caller's limits: `by_role`'s for a role it holds (the largest of several), else the
    defaults, field by field."""
    overrides = [settings.by_role[role] for role in roles & settings.by_role.keys()]
    values: dict[str, int | None] = {}
    for name in LimitValues.model_fields:
        given = [v for v in (getattr(o, name) for o in overrides) if v is not None]
        values[name] = max(given) if given else getattr(settings, name)
    return LimitValues(**values)


def _headers(buckets: list[Bucket], debts_ms: list[float]) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers: requests per minute, and tokens per minute (per day
    when there is no per-minute token limit)."""
    headers: dict[str, str] = {}
    for bucket, debt in zip(buckets, debts_ms, strict=True):
        limit_name, remaining_name, reset_name = bucket.header_names
        if limit_name in headers:  # tokens per day, after tokens per minute
            continue
        remaining = math.floor((bucket.period_ms - debt) / bucket.ms_per_unit)
        headers[limit_name] = str(bucket.limit)
        headers[remaining_name] = str(0 if remaining < 0 else min(remaining, bucket.limit))
        headers[reset_name] = duration(debt if debt > 0 else 0.0)
    return headers


def duration(ms: float) -> str:
    """A wait as OpenAI writes it: `20ms`, `1.5s`, `6m0s`, `1h2m3s`."""
    if ms < 1000:
        return f"{math.ceil(ms)}ms"
    seconds = ms / 1000
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{int(minutes)}m" + text
    if hours:
        text = f"{int(hours)}h" + text
    return text


def _over_limit(bucket: Bucket, wait_ms: float, headers: dict[str, str]) -> CallerLimitError:
    retry_after = max(1, math.ceil(wait_ms / 1000))
    what = {
        "requests": f"{bucket.limit} requests per minute",
        "tokens": f"{bucket.limit} tokens per minute",
        "tokens_day": f"{bucket.limit} tokens per day",
    }[bucket.name]
    error = CallerLimitError(
        f"You are over your limit of {what} on this gateway; retry in {retry_after} s.",
        code="insufficient_quota" if bucket.name == "tokens_day" else "rate_limit_exceeded",
        headers={**headers, "Retry-After": str(retry_after)},
    )
    error.limit = {"requests": "requests_per_minute", "tokens": "tokens_per_minute"}.get(
        bucket.name, "tokens_per_day"
    )
    if bucket.name == "tokens_day":
        error.type = "insufficient_quota"
    return error
