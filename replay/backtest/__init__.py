"""Offline backtest: score files with an artifact (run), label and evaluate the scored rows as they
stream (labels, evaluator, heads), trade them (trading) and plot the result (plots)."""
