"""lobstream.models."""
