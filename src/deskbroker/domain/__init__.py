"""Pure rules of the broker: no I/O here."""
