"""Redis: every key and channel name, the live store, fan-out, the ingest log."""
