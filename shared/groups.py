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

import random
import time
from collections.abc import Callable, Iterator

from .config import EndpointConfig, GatewayConfig, GroupConfig

#: Weight of the newest time to first byte in a member's moving average.
LATENCY_SMOOTHING = 0.3
#: A member measured longer ago than this counts as unmeasured, so it gets a request again.
LATENCY_STALE_S = 30.0


class Latencies:
    """Per endpoint, the exponentially weighted moving average of its time to first byte."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, stale_s: float = LATENCY_STALE_S) -> None:
        self.clock = clock
        self._stale_s = stale_s
        #: name -> (average in seconds, when it was last updated)
        self._averages: dict[str, tuple[float, float]] = {}

    def observe(self, name: str, seconds: float) -> None:
        now = self.clock()
        previous = self._averages.get(name)
        if previous is None or now - previous[1] > self._stale_s:
            self._averages[name] = (seconds, now)
        else:
            average = previous[0]
            self._averages[name] = (average + LATENCY_SMOOTHING * (seconds - average), now)

    def estimate(self, name: str, now: float) -> float:
        """The average; 0 when there is none or it is stale (such a member goes first)."""
        entry = self._averages.get(name)
        if entry is None or now - entry[1] > self._stale_s:
            return 0.0
        return entry[0]


class GroupDispatch:
    """The candidates of one group's requests, in the order its strategy tries them."""

    def __init__(
        self,
        group: GroupConfig,
        config: GatewayConfig,
        in_flight: Callable[[str], int],
        latencies: Latencies,
        rand: Callable[[], float] = random.random,
    ) -> None:
        by_name = config.endpoints_by_name
        self.name = group.name
        self.strategy = group.strategy
        self._members = tuple((by_name[m.endpoint], m.weight) for m in group.members)
        self._fallbacks = tuple(by_name[name] for name in group.fallbacks)
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
            if index is None:  # every member left is at its max_concurrency
                for endpoint, _ in remaining:
                    yield endpoint
                break
            yield remaining.pop(index)[0]
        yield from self._fallbacks

    def _has_room(self, endpoint: EndpointConfig) -> bool:
        limit = endpoint.max_concurrency
        return limit is None or self._in_flight(endpoint.name) < limit

    def _weighted(self, members: list[tuple[EndpointConfig, float]]) -> int | None:
        total = 0.0
        for endpoint, weight in members:
            if weight and self._has_room(endpoint):
                total += weight
        if total:
            point = self._rand() * total
            last = None
            for index, (endpoint, weight) in enumerate(members):
                if weight and self._has_room(endpoint):
                    last = index
                    point -= weight
                    if point < 0:
                        return index
            return last  # rounding left the point at the very end
        for index, (endpoint, _) in enumerate(members):  # the overflow members, in order
            if self._has_room(endpoint):
                return index
        return None

    def _least_busy(self, members: list[tuple[EndpointConfig, float]]) -> int | None:
        return self._lowest(members, lambda endpoint: self._in_flight(endpoint.name))

    def _lowest_latency(self, members: list[tuple[EndpointConfig, float]]) -> int | None:
        now = self._latencies.clock()
        return self._lowest(members, lambda endpoint: self._latencies.estimate(endpoint.name, now))

    def _lowest(
        self, members: list[tuple[EndpointConfig, float]], cost: Callable[[EndpointConfig], float]
    ) -> int | None:
        """The member with room and the lowest cost; ties go to each in turn."""
        count = len(members)
        self._turn += 1
        best, best_cost = None, 0.0
        for offset in range(count):
            index = (self._turn + offset) % count
            endpoint = members[index][0]
            if not self._has_room(endpoint):
                continue
            value = cost(endpoint)
            if best is None or value < best_cost:
                best, best_cost = index, value
        return best
