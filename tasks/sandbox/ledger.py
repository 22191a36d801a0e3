"""The ledger: every message the sandbox accepted, and the counters behind ``/_sandbox/stats``.

Entries are kept column by column (times in an ``array``, the rest in lists of shared
strings, and the media of the messages that have one in a dict by sequence number): a million
messages with 60-character bodies take about 350 MB. Sequence numbers and provider message ids
are derived from positions, not stored. Past ``capacity`` entries the oldest tenth is dropped
from the listing (counters, duplicate detection and statistics still cover them).
"""

from __future__ import annotations

import secrets
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasks.sandbox.behaviour import REFUSAL_CLASSES

# The values of tasks.providers.base.ProviderKind, as plain strings: the sandbox does not
# import the adapters package (it must run while they change) and compares kinds per request.
MESSENGER = "messenger"
WHATSAPP = "whatsapp"
EVOLUTION = "evolution"
SMTP = "smtp"
WEBHOOK = "webhook"

WINDOW_SECONDS = 1.0
DEFAULT_CAPACITY = 5_000_000


@dataclass(slots=True)
class Message:
    """One message as the sandbox understood it, whatever the provider.

    ``body`` is the text (a media's caption); a media message also has its ``media_url`` and
    ``media_type`` (the provider's own word: image, video, audio, document, file, sticker).
    """

    kind: str
    account: str
    recipient: str
    body: str
    reference: str | None
    sender: str | None = None  # fingerprint of the credential it was sent with (see wire.fingerprint)
    media_url: str | None = None
    media_type: str | None = None


class AccountTally:
    """One account: its counters, the references it has seen and its busiest second."""

    __slots__ = (
        "accepted",
        "account",
        "bodies_seen",
        "duplicates",
        "kind",
        "max_in_any_1s_window",
        "recent",
        "references_seen",
        "refused",
    )

    def __init__(self, kind: str, account: str) -> None:
        self.kind = kind
        self.account = account
        self.accepted = 0
        self.duplicates = 0
        self.max_in_any_1s_window = 0
        self.recent: deque[float] = deque()
        self.refused: dict[str, int] = {}
        self.references_seen: dict[str, str | set[str]] = {}
        self.bodies_seen: dict[str, str | set[str]] = {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "max_in_any_1s_window": self.max_in_any_1s_window,
            "rejected": dict(self.refused),
        }


def _seen_before(seen: dict[str, str | set[str]], recipient: str, value: str) -> bool:
    """Whether ``value`` was already recorded for ``recipient``; records it if not.

    Most recipients get one message, so a lone value is stored as is and only becomes a set
    when a second one arrives.
    """
    known = seen.get(recipient)
    if known is None:
        seen[recipient] = value
        return False
    if isinstance(known, str):
        if known == value:
            return True
        seen[recipient] = {known, value}
        return False
    if value in known:
        return True
    known.add(value)
    return False


class Ledger:
    """Accepted messages in order, duplicate detection and statistics."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.reset()

    def reset(self) -> None:
        self.times = array("d")
        self.tallies: list[AccountTally] = []
        self.recipients: list[str] = []
        self.bodies: list[str] = []
        self.references: list[str | None] = []
        self.media: dict[int, tuple[str, str | None]] = {}  # seq -> (url, type), media messages only
        self.first_seq = 1
        self.accepted = 0
        self.duplicates = 0
        self.hung = 0
        self.malformed = 0
        self.refused = dict.fromkeys(REFUSAL_CLASSES, 0)
        self.accounts: dict[tuple[str, str], AccountTally] = {}
        nonce = secrets.token_hex(4)
        nonce_number = int(nonce, 16) << 16
        self._id_formats: dict[str, Callable[[int], str]] = {
            WHATSAPP: lambda seq: f"wamid.HBgM{nonce}{seq}",
            MESSENGER: lambda seq: f"m_{nonce}{seq}",
            EVOLUTION: lambda seq: f"BAE5{(nonce_number + seq) & 0xFFFFFFFFFFFF:012X}",
            SMTP: lambda seq: f"{nonce}.{seq}@sandbox.crier",
            WEBHOOK: lambda seq: f"wh_{nonce}{seq}",
        }

    def tally(self, kind: str, account: str) -> AccountTally:
        """The counters of ``account`` of this ``kind`` (accounts of different kinds never mix)."""
        tally = self.accounts.get((kind, account))
        if tally is None:
            tally = self.accounts[kind, account] = AccountTally(kind, account)
        return tally

    def record(self, message: Message, now: float) -> str:
        """Add an accepted message (``now`` is monotonic) and return its provider message id."""
        tally = self.accounts.get((message.kind, message.account)) or self.tally(
            message.kind, message.account
        )
        recipient = message.recipient
        if message.reference is not None:
            duplicate = _seen_before(tally.references_seen, recipient, message.reference)
        else:
            content = message.body if message.media_url is None else f"{message.body}\n{message.media_url}"
            duplicate = _seen_before(tally.bodies_seen, recipient, content)
        if duplicate:
            self.duplicates += 1
            tally.duplicates += 1
        self.accepted += 1
        tally.accepted += 1
        recent = tally.recent
        recent.append(now)
        horizon = now - WINDOW_SECONDS
        while recent[0] <= horizon:
            recent.popleft()
        if len(recent) > tally.max_in_any_1s_window:
            tally.max_in_any_1s_window = len(recent)
        if len(self.times) >= self.capacity:
            self._drop_oldest(max(1, self.capacity // 10))
        self.times.append(time.time())
        self.tallies.append(tally)
        self.recipients.append(recipient)
        self.bodies.append(message.body)
        self.references.append(message.reference)
        seq = self.first_seq + len(self.times) - 1
        if message.media_url is not None:
            self.media[seq] = (message.media_url, message.media_type)
        return self._id_formats[message.kind](seq)

    def _drop_oldest(self, count: int) -> None:
        """Forget the oldest entries of the listing (counters and duplicate detection keep them)."""
        del self.times[:count]
        del self.tallies[:count]
        del self.recipients[:count]
        del self.bodies[:count]
        del self.references[:count]
        self.first_seq += count
        if self.media:
            self.media = {seq: media for seq, media in self.media.items() if seq >= self.first_seq}

    def refuse(self, reason: str, kind: str, account: str | None) -> None:
        """Count a refused request (refusals never enter the ledger)."""
        self.refused[reason] += 1
        if account is not None:
            refused = self.tally(kind, account).refused
            refused[reason] = refused.get(reason, 0) + 1

    def page(self, after: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Entries with ``seq > after`` (at most ``limit``), and the seq to continue after."""
        start = max(after + 1, self.first_seq) - self.first_seq
        stop = min(start + limit, len(self.times))
        listed = []
        for index in range(start, stop):
            seq = self.first_seq + index
            tally = self.tallies[index]
            media_url, media_type = self.media.get(seq, (None, None))
            listed.append(
                {
                    "seq": seq,
                    "at": self.times[index],
                    "kind": tally.kind,
                    "account": tally.account,
                    "recipient": self.recipients[index],
                    "body": self.bodies[index],
                    "reference": self.references[index],
                    "message_id": self._id_formats[tally.kind](seq),
                    "media_url": media_url,
                    "media_type": media_type,
                }
            )
        return listed, listed[-1]["seq"] if listed else max(after, self.first_seq - 1)

    def stats(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": dict(self.refused),
            "hung": self.hung,
            "malformed": self.malformed,
            "ledger": {"first_seq": self.first_seq, "last_seq": self.first_seq + len(self.times) - 1},
            "by_account": self.by_account(),
        }

    def by_account(self) -> dict[str, dict[str, Any]]:
        """Counters per account name; a name used by several kinds is listed as ``kind:name``."""
        kinds_per_name: dict[str, int] = {}
        for _, account in self.accounts:
            kinds_per_name[account] = kinds_per_name.get(account, 0) + 1
        return {
            account if kinds_per_name[account] == 1 else f"{kind}:{account}": tally.to_dict()
            for (kind, account), tally in self.accounts.items()
        }
