"""Offline backtest: score files with an artifact (run), evaluate the scored rows as they stream
(evaluator, heads; labels from kernels.labels), trade them (trading) and plot the result (plots)."""
