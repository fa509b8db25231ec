"""What a simulation run did, counted as it goes and printed at the end."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Stats:
    """Counters shared by every simulated client (one event loop, so no locking)."""

    fixes_sent: int = 0
    fixes_acked: int = 0
    fixes_rejected: int = 0
    reconnects: int = 0
    offers: int = 0
    offers_declined: int = 0
    rides_requested: int = 0
    rides_accepted: int = 0
    rides_completed: int = 0
    rides_cancelled: int = 0
    rides_expired: int = 0
    request_errors: int = 0
    hints: int = 0
    fix_requests: int = 0

    def summary(self) -> str:
        return (
            f"fixes sent {self.fixes_sent}, acked {self.fixes_acked}, "
            f"rejected {self.fixes_rejected}; hints {self.hints}, fix requests "
            f"{self.fix_requests}; reconnects {self.reconnects}; "
            f"offers {self.offers} (declined {self.offers_declined}); "
            f"rides requested {self.rides_requested} (failed {self.request_errors}), "
            f"accepted {self.rides_accepted}, "
            f"completed {self.rides_completed}, cancelled {self.rides_cancelled}, "
            f"expired {self.rides_expired}"
        )
