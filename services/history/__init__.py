"""PostgreSQL + PostGIS: the history store, the write-behind persister, maintenance, migrations."""
