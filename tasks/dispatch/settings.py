"""What dispatch reads from the app's configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DispatchSettings:
    slice_seconds: float
    window: int  # deliveries claimed and not yet recorded, per slice
    chains: int
    lease_seconds: float
    retry_base_seconds: float

    @classmethod
    def of(cls, config) -> DispatchSettings:
        return cls(
            slice_seconds=float(config["DISPATCH_SLICE_SECONDS"]),
            window=int(config["DISPATCH_WINDOW"]),
            chains=int(config["DISPATCH_CHAINS"]),
            lease_seconds=float(config["LEASE_SECONDS"]),
            retry_base_seconds=float(config["RETRY_BASE_SECONDS"]),
        )
