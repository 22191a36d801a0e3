"""How the sandbox treats a message: its configuration, latency, failures and provider-style limits.

Every random choice comes from one ``random.Random`` seeded with ``config.seed``, so a run
with the same traffic makes the same choices.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

PAIR_WINDOW_SECONDS = 6.0
MALFORMED_KINDS = ("html", "empty", "truncated")


class Verdict(enum.StrEnum):
    """What happened to a well-formed message; every value but ``accepted`` is a refusal class."""

    ACCEPTED = "accepted"
    TRANSIENT = "transient"
    THROTTLED = "throttled"
    RECIPIENT_PACED = "recipient_paced"
    PERMANENT = "permanent"


REFUSAL_CLASSES = (
    "unauthorized",
    "bad_request",
    "not_found",
    Verdict.TRANSIENT.value,
    Verdict.THROTTLED.value,
    Verdict.RECIPIENT_PACED.value,
    Verdict.PERMANENT.value,
)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a number >= 0")
    return float(value)


def _share(name: str, value: Any) -> float:
    share = _number(name, value)
    if share > 1:
        raise ValueError(f"{name} must be between 0 and 1")
    return share


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0")
    return value


def _positive_count(name: str, value: Any) -> int:
    if _count(name, value) < 1:
        raise ValueError(f"{name} must be an integer >= 1")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value


def _suffixes(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{name} must be a list of strings")
    return [item for item in value if item]


def _seed(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    return value


def _one_of(*choices: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}")
        return value

    return check


def _rule(check: Callable[[str, Any], Any], doc: str, **extra: Any) -> dict[str, Any]:
    return {"check": check, "doc": doc, **extra}


@dataclass(slots=True)
class SandboxConfig:
    """Run-time behaviour; ``GET``/``PUT /_sandbox/config`` reads and partially updates it."""

    latency_ms: float = field(default=0.0, metadata=_rule(_number, "fixed delay before every answer"))
    jitter_ms: float = field(
        default=0.0, metadata=_rule(_number, "extra random delay, uniform in [0, jitter_ms]")
    )
    transient_share: float = field(
        default=0.0, metadata=_rule(_share, "share of messages answered with a transient error")
    )
    permanent_suffixes: list[str] = field(
        default_factory=lambda: ["0000"],
        metadata=_rule(_suffixes, "recipients (local part for e-mail) ending in one of these always fail"),
    )
    rate_limit: float = field(
        default=0.0, metadata=_rule(_number, "messages per second per account; 0 = unlimited")
    )
    throttle_share: float = field(
        default=0.0,
        metadata=_rule(_share, "share of messages throttled at random (WhatsApp 130429), whatever the rate"),
    )
    pair_limit: int = field(
        default=0,
        metadata=_rule(_count, "WhatsApp: messages to one recipient per 6 s before 131056; 0 = unlimited"),
    )
    hang_share: float = field(
        default=0.0, metadata=_rule(_share, "share of requests that wait hang_seconds before answering")
    )
    hang_seconds: float = field(default=30.0, metadata=_rule(_number, "how long a hung request waits"))
    malformed_share: float = field(
        default=0.0,
        metadata=_rule(_share, "share of HTTP sends answered with a malformed answer (see malformed_kind)"),
    )
    malformed_kind: str = field(
        default="html",
        metadata=_rule(
            _one_of(*MALFORMED_KINDS),
            "html: a load balancer's 502 page, message not accepted; empty: an empty 2xx body; "
            "truncated: the 2xx JSON cut in half (both accepted)",
            choices=MALFORMED_KINDS,
        ),
    )
    callbacks: bool = field(
        default=True, metadata=_rule(_flag, "send delivered/read receipts to subscribed accounts")
    )
    delivered_after_ms: float = field(
        default=200.0, metadata=_rule(_number, "delay of the delivered receipt")
    )
    read_after_ms: float = field(default=1000.0, metadata=_rule(_number, "delay of the read receipt"))
    read_share: float = field(
        default=0.5, metadata=_rule(_share, "share of messages that also get a read receipt")
    )
    callback_flush_ms: float = field(
        default=100.0, metadata=_rule(_number, "how often due receipts are sent")
    )
    callback_batch: int = field(
        default=100, metadata=_rule(_positive_count, "most statuses in one Meta receipt POST")
    )
    seed: int = field(
        default=0, metadata=_rule(_seed, "seed of the random choices (reseeded on change and on reset)")
    )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SandboxConfig:
        config = cls()
        config.update(values)
        return config

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` after validating all of them (nothing changes if one is invalid)."""
        checks = {item.name: item.metadata["check"] for item in fields(self)}
        unknown = sorted(set(changes) - set(checks))
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        checked = {name: checks[name](name, value) for name, value in changes.items()}
        for name, value in checked.items():
            setattr(self, name, value)

    def copy(self) -> SandboxConfig:
        return SandboxConfig.from_mapping(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AccountRateLimiter:
    """Admits at most ``rate`` messages per ``(kind, account)`` in any sliding second.

    Below one message a second the window stretches to ``1 / rate`` seconds holding one message.
    """

    __slots__ = ("_recent",)

    def __init__(self) -> None:
        self._recent: dict[tuple[str, str], deque[float]] = {}

    def admit(self, account: tuple[str, str], rate: float, now: float) -> float | None:
        """Count the message and return None, or return the seconds until the account may send."""
        window = 1.0 if rate >= 1 else 1.0 / rate
        capacity = max(1, int(rate * window))
        recent = self._recent.get(account)
        if recent is None:
            recent = self._recent[account] = deque()
        horizon = now - window
        while recent and recent[0] <= horizon:
            recent.popleft()
        if len(recent) >= capacity:
            return recent[0] + window - now
        recent.append(now)
        return None

    def clear(self) -> None:
        self._recent.clear()


class PairLimiter:
    """WhatsApp's pair rate limit: at most ``limit`` messages from one account to one recipient per 6 s."""

    __slots__ = ("_next_sweep", "_recent")

    def __init__(self) -> None:
        self._recent: dict[tuple[str, str], deque[float]] = {}
        self._next_sweep = 0.0

    def admit(self, account: str, recipient: str, limit: int, now: float) -> bool:
        horizon = now - PAIR_WINDOW_SECONDS
        if now >= self._next_sweep:
            self._recent = {pair: times for pair, times in self._recent.items() if times[-1] > horizon}
            self._next_sweep = now + PAIR_WINDOW_SECONDS
        recent = self._recent.setdefault((account, recipient), deque())
        while recent and recent[0] <= horizon:
            recent.popleft()
        if len(recent) >= limit:
            return False
        recent.append(now)
        return True

    def clear(self) -> None:
        self._recent.clear()


class Behaviour:
    """Decides latency and the verdict of each message from the live configuration."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.rate_limiter = AccountRateLimiter()
        self.pair_limiter = PairLimiter()

    def reset(self) -> None:
        self.rng.seed(self.config.seed)
        self.rate_limiter.clear()
        self.pair_limiter.clear()

    def delay(self) -> tuple[float, bool]:
        """Seconds to wait before answering, and whether this request hangs."""
        config = self.config
        if config.hang_share and self.rng.random() < config.hang_share:
            return config.hang_seconds, True
        seconds = config.latency_ms
        if config.jitter_ms:
            seconds += self.rng.uniform(0.0, config.jitter_ms)
        return seconds / 1000.0, False

    def malformed(self) -> str | None:
        """The malformed answer this send gets (``malformed_kind``), or None; only called when
        ``malformed_share`` is set, so the random sequence is unchanged without it."""
        config = self.config
        return config.malformed_kind if self.rng.random() < config.malformed_share else None

    def judge(self, kind: str, account: str, recipient: str, now: float) -> tuple[Verdict, float | None]:
        """The verdict for one message and, when throttled, the seconds to wait."""
        config = self.config
        if config.transient_share and self.rng.random() < config.transient_share:
            return Verdict.TRANSIENT, None
        if config.throttle_share and self.rng.random() < config.throttle_share:
            return Verdict.THROTTLED, 1.0
        if config.rate_limit:
            wait = self.rate_limiter.admit((kind, account), config.rate_limit, now)
            if wait is not None:
                return Verdict.THROTTLED, wait
        if (
            config.pair_limit
            and kind == "whatsapp"
            and not self.pair_limiter.admit(account, recipient, config.pair_limit, now)
        ):
            return Verdict.RECIPIENT_PACED, None
        if self.is_permanent(recipient):
            return Verdict.PERMANENT, None
        return Verdict.ACCEPTED, None

    def is_permanent(self, recipient: str) -> bool:
        local = recipient.split("@", 1)[0]
        return any(local.endswith(suffix) for suffix in self.config.permanent_suffixes)

    def wants_read_receipt(self) -> bool:
        share = self.config.read_share
        return share >= 1 or (share > 0 and self.rng.random() < share)
