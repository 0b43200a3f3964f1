"""lobstream.kernels."""
