"""Who takes part in a ride's chat: the rider or the driver, by id."""

from __future__ import annotations

from dataclasses import dataclass

from ridemesh.v1 import ride_service_pb2 as pb


@dataclass(frozen=True, slots=True)
class Participant:
    """Who is on a chat stream. The servicer builds it from the verified token
    (services.auth.rules.chat_participant, passed to the chat as `identify`)."""

    party: pb.Party.ValueType
    participant_id: str
