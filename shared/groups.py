"""Model groups: one name in `model` over several endpoints, and the order a request tries them.

A group's request tries its members in the order its strategy picks them, one at a time (the
next pick happens only if the previous member failed), then the group's `fallbacks` in order:

- `weighted` (default): at random, in proportion to the members' weights; a member of weight 0
  only when no member with a weight can take the request (an overflow);
- `least_busy`: the member with the fewest calls in flight in this process;
- `lowest_latency`: the member with the lowest moving average of time to first byte (a member
  without a recent measurement goes first, so a slow member is tried again now and then).

A member at its `max_concurrency` is picked only after every other member; the pipeline skips
members in cooldown (`Cooldowns.admit`) and moves on. Ties go round-robin. The pipeline
measures time to first byte (`Latencies.observe`) for members of `lowest_latency` groups.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Mapping

from .config import EndpointConfig, GatewayConfig, GroupConfig

#: Weight of the newest time to first byte in a member's moving average.
LATENCY_SMOOTHING = 0.3
#: A member measured longer ago than this counts as unmeasured, so it gets a request again.
LATENCY_STALE_S = 30.0


class Latencies:
    """Per endpoint, the exponentially weighted moving average of its time to first byte."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, stale_s: float = LATENCY_STALE_S) -> None:
        self.clock = clock
        self.stale_s = stale_s
        #: name -> (average in seconds, when it was last updated)
        self.averages: dict[str, tuple[float, float]] = {}

    def observe(self, name: str, seconds: float) -> None:
        now = self.clock()
        previous = self.averages.get(name)
        if previous is None or now - previous[1] > self.stale_s:
            self.averages[name] = (seconds, now)
        else:
            average = previous[0]
            self.averages[name] = (average + LATENCY_SMOOTHING * (seconds - average), now)

    def estimate(self, name: str, now: float) -> float:
        """The average; 0 when there is none or it is stale (such a member goes first)."""
        entry = self.averages.get(name)
        if entry is None or now - entry[1] > self.stale_s:
            return 0.0
        return entry[0]


class GroupDispatch:
    """The candidates of one group's requests, in the order its strategy tries them."""

    def __init__(
        self,
        group: GroupConfig,
        config: GatewayConfig,
        in_flight: Mapping[str, int],
        latencies: Latencies,
        rand: Callable[[], float] = random.random,
    ) -> None:
        by_name = config.endpoints_by_name
        self.name = group.name
        self.strategy = group.strategy
        # Per member: (endpoint, name, weight, max_concurrency or infinity): read on every request.
        self._members = tuple(
            (by_name[m.endpoint], m.endpoint, m.weight, by_name[m.endpoint].max_concurrency or math.inf)
            for m in group.members
        )
        self._fallbacks = tuple(by_name[name] for name in group.fallbacks)
        #: The live count of calls in flight per endpoint (the pipeline's `InFlight.counts`).
        self._in_flight = in_flight
        self._latencies = latencies
        self._rand = rand
        self._turn = 0
        self._pick = {
            "weighted": self._weighted,
            "least_busy": self._least_busy,
            "lowest_latency": self._lowest_latency,
        }[group.strategy]

    def candidates(self) -> Iterator[EndpointConfig]:
        """The members, each picked when the previous one has failed, then the fallbacks."""
        remaining = list(self._members)
        while remaining:
            index = self._pick(remaining)
            if index < 0:  # every member left is at its max_concurrency
                for member in remaining:
                    yield member[0]
                break
            yield remaining.pop(index)[0]
        yield from self._fallbacks

    def _weighted(self, members: list[_Member]) -> int:
        in_flight = self._in_flight
        total = 0.0
        open_ = []  # (running total, index) of the members with a weight and room
        overflow = -1  # the first member of weight 0 with room
        for index, (_, name, weight, limit) in enumerate(members):
            if in_flight.get(name, 0) < limit:
                if weight:
                    total += weight
                    open_.append((total, index))
                elif overflow < 0:
                    overflow = index
        if not open_:
            return overflow
        point = self._rand() * total
        for running, index in open_:
            if point < running:
                return index
        return open_[-1][1]  # rounding left the point at the very end

    def _least_busy(self, members: list[_Member]) -> int:
        """The member with room and the fewest calls in flight; ties go to each in turn."""
        in_flight = self._in_flight
        count = len(members)
        self._turn = turn = self._turn + 1
        best, best_load = -1, math.inf
        for offset in range(count):
            index = (turn + offset) % count
            _, name, _, limit = members[index]
            load = in_flight.get(name, 0)
            if load < limit and load < best_load:
                best, best_load = index, load
        return best

    def _lowest_latency(self, members: list[_Member]) -> int:
        """The member with room and the lowest average time to first byte; ties in turn."""
        in_flight, latencies = self._in_flight, self._latencies
        averages, fresh_since = latencies.averages, latencies.clock() - latencies.stale_s
        count = len(members)
        self._turn = turn = self._turn + 1
        best, best_latency = -1, math.inf
        for offset in range(count):
            index = (turn + offset) % count
            _, name, _, limit = members[index]
            if in_flight.get(name, 0) < limit:
                entry = averages.get(name)
                latency = entry[0] if entry is not None and entry[1] >= fresh_since else 0.0
                if latency < best_latency:
                    best, best_latency = index, latency
        return best


_Member = tuple[EndpointConfig, str, float, float]
