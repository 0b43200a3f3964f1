"""Offline backtest: score files with an artifact (run), evaluate the scored rows as they stream
(evaluator, heads; labels from kernels.labels), trade them (trading), plot the result (plots);
the report of ``lobstream backtest`` (report) and the explained predictions of ``lobstream
explain`` (explain)."""
