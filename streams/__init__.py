"""Event contracts and the event log: Kafka and an embedded SQLite backend behind one contract, plus the outbox."""
