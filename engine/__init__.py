"""lobstream.engine."""
