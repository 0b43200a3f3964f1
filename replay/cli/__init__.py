"""The replay-side subcommands of ``lobstream``: replay/convert (data), train, backtest, explain;
the options they share (options)."""
