"""Live feed side of replay: files -> events on the wire (replayer), synthetic event streams, and the
market-data frame format both sides of the socket share (wire)."""
