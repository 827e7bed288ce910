"""Connection descriptors and protocol plans."""
