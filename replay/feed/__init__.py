"""Live feed side of replay: files -> events on the wire (``replayer``, which cuts batches into
messages by the rule in ``cuts``) and seeded synthetic event streams (``synthetic``). The frame
format both sides of the socket share is :mod:`lobstream.kernels.wire`."""
