"""Webhook subscriptions: the subscriptions, a delivery cursor per event log partition, and the
dead letters (with their replay queue).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The counters live on the subscription row: ListWebhooks reads them with it, and each
    # delivery updates them in the transaction that moves its cursor.
    op.execute(
        """
        CREATE TABLE webhooks (
          id text PRIMARY KEY,
          url text NOT NULL,
          event_kinds text[] NOT NULL DEFAULT '{}',
          geofence_ids text[] NOT NULL DEFAULT '{}',
          labels jsonb NOT NULL DEFAULT '{}',
          secret text NOT NULL,
          max_retry_s double precision NOT NULL
            CHECK (max_retry_s >= 1 AND max_retry_s <= 604800),
          create_time timestamptz NOT NULL DEFAULT now(),
          delivered bigint NOT NULL DEFAULT 0,
          retried bigint NOT NULL DEFAULT 0,
          dead_lettered bigint NOT NULL DEFAULT 0,
          last_error text NOT NULL DEFAULT '',
          last_delivery_time timestamptz
        )
        """
    )
    op.execute("CREATE INDEX webhooks_by_time ON webhooks (create_time, id)")
    # The offset of the last event handled (delivered or dead-lettered) in each partition's log,
    # its ordinal there (the log trimmed more events than that: some were never handled), and
    # the log's epoch it belongs to (another epoch: Redis lost the log since).
    op.execute(
        """
        CREATE TABLE webhook_cursors (
          webhook_id text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
          partition integer NOT NULL,
          epoch text NOT NULL,
          offset_ms bigint NOT NULL,
          offset_seq bigint NOT NULL,
          ordinal bigint NOT NULL,
          PRIMARY KEY (webhook_id, partition)
        )
        """
    )
    # `replay_requested` is the replay queue: ReplayWebhookDeadLetters sets it, the deliverer of
    # the event's partition sends those first and deletes each one the receiver accepts.
    op.execute(
        """
        CREATE TABLE webhook_dead_letters (
          webhook_id text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
          event_id text NOT NULL,
          partition integer NOT NULL,
          kind text NOT NULL,
          payload_json text NOT NULL,
          attempts integer NOT NULL,
          last_error text NOT NULL,
          dead_time timestamptz NOT NULL DEFAULT now(),
          replay_requested boolean NOT NULL DEFAULT false,
          PRIMARY KEY (webhook_id, event_id)
        )
        """
    )
    op.execute(
        "CREATE INDEX webhook_dead_letters_by_time ON webhook_dead_letters "
        "(webhook_id, dead_time, event_id)"
    )
    op.execute(
        "CREATE INDEX webhook_replays ON webhook_dead_letters (webhook_id, partition, dead_time) "
        "WHERE replay_requested"
    )


def downgrade() -> None:
    op.execute("DROP TABLE webhook_dead_letters")
    op.execute("DROP TABLE webhook_cursors")
    op.execute("DROP TABLE webhooks")
