"""lobstream.replay."""
