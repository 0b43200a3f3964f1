"""Slow, obviously-right versions of the fast code, the oracles it is tested against.

``book`` (the L2 book, one event at a time), ``features`` (feature rows on that book),
``labels`` (mid-price labels), ``simulate`` (the array trading simulator) and ``backtest``
(the per-row backtest that keeps every row). Installed with the package, so the tests and
the benchmarks that time these oracles run from anywhere.
"""
