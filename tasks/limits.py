"""Send-rate limits shared by every worker process on every host, decided in Redis on Redis's clock.

Each limit (a page, a tenant's plan rate, a campaign's optional lower rate) is a GCRA: Redis keeps the
limit's *theoretical arrival time* (tat), the earliest moment its next message may go. A worker
reserves ``count`` consecutive slots across all the limits that apply in one Lua script (atomic, one
round trip), gets back when its first slot is and how far apart they are, and sleeps until each slot.
It never fails for want of capacity: it is told how long to wait.

Why GCRA and not fixed windows: a counter per one-second window admits ``rate`` at the end of one
window and ``rate`` again at the start of the next, 2x over the second that straddles them (Dramatiq's
``BucketRateLimiter`` does exactly this). GCRA spaces sends ``1/rate`` apart, so any sliding 1-second
window holds at most ``rate + 1`` of them; because a send can only be late, never early, jitter of up to
``burst / rate`` seconds moves a window's count by less than the burst. Idle time earns no credit
(``start = max(now, tat)``), so nothing bursts after a pause.

Guarantee: over any sliding 1-second window, a limit of ``rate`` sees at most
``rate + burst_allowance(rate)`` sends, provided each send leaves within ``burst / (2 * rate)`` s of its
slot; the limiter keeps the other half of the burst for itself (see ``_RESERVE``). A single limit is
spaced exactly and loses no capacity, so workers that keep asking achieve the full rate.

Keys (all expire on their own; if Redis loses them every limit simply starts fresh):
``{prefix}:rate:{key}`` tat in microseconds, ``{prefix}:slow:{key}`` slow-down (factor, when, recovery),
``{prefix}:warm:{key}`` warm-up factor (set when a limit is used after being idle, if asked for),
``{prefix}:pair:{key}:{recipient}`` per-recipient pacing mark. Requires Redis >= 5 (effects replication,
so scripts may call ``TIME`` and then write).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import redis

BURST_FRACTION = 0.05
"""The burst allowed over the rate in any 1-second window, as a share of the rate (at least 1 message)."""

MIN_FACTOR = 1 / 16
"""The lowest rate multiplier repeated :meth:`RateLimiter.slow_down` calls can reach."""

EXPIRY_MARGIN_MS = 1000
"""How long a rate key outlives its tat (past it, the key no longer changes anything)."""


def burst_allowance(rate: float) -> int:
    """Messages a limit of ``rate``/s may see over ``rate`` in a sliding 1-second window."""
    return max(1, int(rate * BURST_FRACTION))


@dataclass(frozen=True)
class Limit:
    """A rate shared by everyone who names the same ``key`` (e.g. ``"page:12"``, ``"tenant:3"``)."""

    key: str
    rate: float  # messages per second

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("a limit needs a key")
        if not self.rate > 0 or math.isinf(self.rate):
            raise ValueError(f"limit {self.key!r}: rate must be a positive number, not {self.rate!r}")


@dataclass(frozen=True)
class Reservation:
    """``count`` send slots: the first ``start_in`` seconds after the reservation, then every ``interval``."""

    count: int
    start_in: float
    interval: float

    def delays(self) -> list[float]:
        """Seconds from the reservation until each slot; send no earlier (measure on ``time.monotonic``)."""
        return [self.start_in + i * self.interval for i in range(self.count)]


# Times are microseconds on Redis's clock, kept as Lua numbers (doubles: exact to well under 1 us).
# '%.17g' writes a double so that it reads back identical.
_REDIS_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
-- a slow-down is 'factor at recovery': the factor set at 'at' (us), regained at 'recovery' per second
local function slowed(value)
  if not value then return 1 end
  local factor, at, recovery = string.match(value, '^(%S+) (%S+) (%S+)$')
  if not factor then return 1 end
  return math.min(1, tonumber(factor) + tonumber(recovery) * (now - tonumber(at)) / 1000000)
end
"""

_RESERVE = (
    _REDIS_NOW
    + """
-- KEYS[3i-2]: tat of limit i; KEYS[3i-1]: its slow-down factor (absent: 1); KEYS[3i]: its warm-up
-- factor (absent: 1). ARGV: count, burst fraction, expiry margin (ms), warm-up ms, warm-up factor,
-- then the rate of each limit (messages/s).
local count, burst_fraction, margin = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local warm_up_ms, warm_up_factor = tonumber(ARGV[4]), ARGV[5]
local limits = #KEYS / 3
local start, interval = now, 0
local free_at, spacing, max_lag = {}, {}, {}
for i = 1, limits do
  local tat = redis.call('GET', KEYS[3 * i - 2])
  if not tat and warm_up_ms > 0 then  -- idle (or never used): start at a fraction of the rate
    redis.call('SET', KEYS[3 * i], warm_up_factor, 'PX', warm_up_ms)
  end
  local rate = tonumber(ARGV[5 + i]) * slowed(redis.call('GET', KEYS[3 * i - 1]))
    * tonumber(redis.call('GET', KEYS[3 * i]) or '1')
  free_at[i] = math.max(now, tonumber(tat or '0'))
  spacing[i] = 1000000 / rate
  -- how far a slot may trail this limit's own schedule: half its burst (the sender's jitter gets the rest)
  max_lag[i] = math.max(1, math.floor(rate * burst_fraction)) * spacing[i] / 2
  start = math.max(start, free_at[i])
  interval = math.max(interval, spacing[i])
end
-- the slots go at the slowest limit's spacing; each limit is charged count of its own spacings, so a
-- faster limit keeps room for others between these slots, but never trails the last slot by over max_lag
local last = start + (count - 1) * interval
for i = 1, limits do
  local tat = math.max(free_at[i] + count * spacing[i], last + spacing[i] - max_lag[i])
  local ttl = math.ceil((tat - now) / 1000) + margin
  redis.call('SET', KEYS[3 * i - 2], string.format('%.17g', tat), 'PX', string.format('%d', ttl))
end
return {string.format('%.17g', start - now), string.format('%.17g', interval)}
"""
)

_COOL_DOWN = (
    _REDIS_NOW
    + """
-- KEYS[1]: tat; ARGV: seconds, expiry margin (ms). Nobody gets a slot before now + seconds.
local tat = math.max(now + tonumber(ARGV[1]) * 1000000, tonumber(redis.call('GET', KEYS[1]) or '0'))
local ttl = math.ceil((tat - now) / 1000) + tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', string.format('%d', ttl))
"""
)

_SLOW_DOWN = (
    _REDIS_NOW
    + """
-- KEYS[1]: slow-down; ARGV: multiplier, floor, recovery per second. Returns the new factor.
local factor = math.max(tonumber(ARGV[2]), slowed(redis.call('GET', KEYS[1])) * tonumber(ARGV[1]))
local recovery = tonumber(ARGV[3])
local ttl = math.ceil((1 - factor) / recovery * 1000) + 1
redis.call('SET', KEYS[1], string.format('%.17g %.17g %.17g', factor, now, recovery), 'PX', ttl)
return string.format('%.17g', factor)
"""
)

_FACTOR = (
    _REDIS_NOW
    + """
return string.format('%.17g', slowed(redis.call('GET', KEYS[1])))
"""
)

_PACE = """
-- KEYS: one mark per recipient; ARGV[1]: interval (ms). 0 marks the recipient as sent to now,
-- otherwise the milliseconds its mark still has to live.
local waits = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, '1', 'NX', 'PX', ARGV[1]) then
    waits[i] = 0
  else
    waits[i] = math.max(1, redis.call('PTTL', key))
  end
end
return waits
"""


class RateLimiter:
    """GCRA send slots and per-recipient pacing, shared through Redis by every worker using ``prefix``."""

    def __init__(self, client: redis.Redis, prefix: str, warm_up: tuple[float, float] | None = None):
        """``warm_up`` (factor, seconds): a limit that was idle runs at ``factor`` of its rate for its
        first ``seconds`` (senders' connections and code paths are cold then, and their first
        sends bunch); None: full rate at once."""
        self.client = client
        self.prefix = prefix
        self.warm_up = warm_up
        self._reserve = client.register_script(_RESERVE)
        self._cool_down = client.register_script(_COOL_DOWN)
        self._slow_down = client.register_script(_SLOW_DOWN)
        self._factor = client.register_script(_FACTOR)
        self._pace = client.register_script(_PACE)

    def rate_key(self, key: str) -> str:
        return f"{self.prefix}:rate:{key}"

    def slow_key(self, key: str) -> str:
        return f"{self.prefix}:slow:{key}"

    def warm_key(self, key: str) -> str:
        return f"{self.prefix}:warm:{key}"

    def pair_key(self, key: str, recipient: str) -> str:
        return f"{self.prefix}:pair:{key}:{recipient}"

    def reserve(self, limits: Sequence[Limit], count: int) -> Reservation:
        """Reserve ``count`` consecutive send slots that respect every one of ``limits``, atomically.

        The slots are spaced by the slowest limit (after slow-downs) and start when every limit is free.
        Sleep until each slot (:meth:`Reservation.delays`, from when this returns) before sending; a slot
        not used is lost. A limit faster than the slowest one (a tenant's plan rate over its pages) stays
        taken until about the last slot, so to let other pages' slots fall in between, reserve small
        chunks (``burst_allowance`` of the slowest rate) shortly before they are due, not seconds ahead.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        slowest: dict[str, float] = {}
        for limit in limits:
            slowest[limit.key] = min(limit.rate, slowest.get(limit.key, math.inf))
        if not slowest:
            return Reservation(count=count, start_in=0.0, interval=0.0)
        keys = [
            name for key in slowest for name in (self.rate_key(key), self.slow_key(key), self.warm_key(key))
        ]
        factor, seconds = self.warm_up or (1.0, 0.0)
        warm_up_ms = max(0, math.ceil(seconds * 1000))
        args = [
            count,
            BURST_FRACTION,
            EXPIRY_MARGIN_MS,
            warm_up_ms,
            repr(factor),
            *(repr(rate) for rate in slowest.values()),
        ]
        start_in_us, interval_us = self._reserve(keys=keys, args=args)
        return Reservation(
            count=count, start_in=max(0.0, float(start_in_us) / 1e6), interval=float(interval_us) / 1e6
        )

    def slow_down(self, key: str, factor: float, recovery: float) -> float:
        """Multiply ``key``'s rate by ``factor`` now; it climbs back by ``recovery`` (a share of the full
        rate) per second, so it is whole again ``(1 - factor) / recovery`` seconds after the last call.

        Calls compound on the factor in force when they are made, floored at ``MIN_FACTOR``: providers
        that keep objecting keep the rate down, and one that stops objecting gets it back soon
        (additive increase, multiplicative decrease). Returns the factor now in force.
        """
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1], not {factor!r}")
        if not recovery > 0:
            raise ValueError(f"recovery must be positive, not {recovery!r}")
        return float(
            self._slow_down(keys=[self.slow_key(key)], args=[repr(factor), repr(MIN_FACTOR), repr(recovery)])
        )

    def cool_down(self, key: str, seconds: float) -> None:
        """Give nobody a new slot on ``key`` before ``seconds`` from now (slots already granted stand)."""
        self._cool_down(keys=[self.rate_key(key)], args=[repr(max(0.0, seconds)), EXPIRY_MARGIN_MS])

    def backlog(self, keys: Sequence[str]) -> float:
        """Seconds until the busiest of ``keys`` has a free slot (0.0 when one is free now).

        A sender that holds off while this exceeds a fraction of a second never books slots it
        may have to give back.
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        for key in keys:
            pipe.get(self.rate_key(key))
        (seconds, micros), *tats = pipe.execute()
        now = seconds * 1_000_000 + micros
        busiest = max((float(tat) for tat in tats if tat is not None), default=0.0)
        return max(0.0, (busiest - now) / 1e6)

    def current_factor(self, key: str) -> float:
        """The multiplier on ``key``'s rate now (1.0 unless slowed down and not yet recovered)."""
        return float(self._factor(keys=[self.slow_key(key)]))

    def unpace_recipients(self, key: str, recipients: Sequence[str]) -> None:
        """Forget the marks of recipients whose message did not reach them (refused, throttled): their
        retry need not wait out the interval."""
        if recipients:
            self.client.delete(*(self.pair_key(key, r) for r in dict.fromkeys(recipients)))

    def pace_recipients(self, key: str, recipients: Sequence[str], interval: float) -> dict[str, float]:
        """Seconds each recipient must still wait on ``key`` (0.0: send now, marked for ``interval`` s).

        For providers that limit messages per recipient (WhatsApp's pair rate). Call it just before
        sending, after any rate-limit wait: the mark counts from this call. A recipient listed twice is
        asked about once.
        """
        unique = list(dict.fromkeys(recipients))
        if not unique:
            return {}
        interval_ms = max(1, math.ceil(interval * 1000))
        waits_ms = self._pace(keys=[self.pair_key(key, r) for r in unique], args=[interval_ms])
        return {recipient: int(ms) / 1000 for recipient, ms in zip(unique, waits_ms, strict=True)}
