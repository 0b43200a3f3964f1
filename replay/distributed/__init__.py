"""Backtests and conversions of many files on Ray (this package): one task per unit, results merged exactly.

``lobstream backtest --ray [ADDRESS]`` and ``lobstream convert --ray [ADDRESS]`` run here;
``lobstream train --sweep ... --ray`` is :mod:`lobstream.replay.training.sweep`. Without an address a
local Ray starts on this machine (no set-up); with one (``auto``, ``HOST:6379`` or
``ray://HOST:10001``) the driver joins that cluster. Ray is optional (``pip install
'lobstream[ray]'``): nothing here imports it until a command asks for it.

What a unit is, and why the merge is exact
------------------------------------------
The one-process backtest reads its files one after the other as ONE stream (``read_events``):
each instrument's book, window carry, labels (their lookahead) and open positions run on from
one file into the next file of the same instrument, while different instruments share nothing
but the row numbering (trades name rows of the whole stream) and the registry (ids in order of
first appearance). So a unit is the set of files that share instruments (a connected component
of "file -> symbols it carries"; usually one file, or every day of one instrument), its files
in the command's order, and

1. the driver first learns each file's symbols (LOBSTER: from the file name; other formats: a
   reading pass, as Ray tasks) and builds the registry the one-process run would build, in the
   same order (its ids), which every task gets: ids agree everywhere, no remapping by symbol;
2. each unit's task (or each instrument's, see below) replays its files into an evaluator
   (:func:`lobstream.replay.backtest.evaluator.evaluator_for`) and finishes it (end of its instruments'
   streams: the last labels, open positions closed at the instrument's last row), counting
   rows and events per file;
3. the driver renumbers each unit's rows into the whole stream's numbering (files in the
   command's order, each file's rows contiguous there) and merges the evaluators
   (``merge``: counts add, trades join and are ordered by exit time then row).

A canonical Parquet dataset folder is expanded into its part files (what its reader reads, in
its order; one instrument each), so its instruments are units of their own. A unit of several
instruments (a file that holds several, interleaved: a multi-symbol Databento or Tardis file)
becomes one task per instrument (:func:`split_units`): each task reads all of the unit's files
and runs the book over every event (cheap next to the model), scores only its instrument's
rows, and records where they sit among all the unit's rows (``segments``), which is what the
renumbering needs; one task of the unit counts its events and kernel conditions.

Confusion matrices, signal counts, trades and every number of the summary are then equal to
the one-process run's (tests/test_ray.py); only ``seconds`` differ, and the calibration bins'
float sums (plots) are added in another order. ``--max-rows`` cuts the one stream at a row and
is refused with ``--ray``. Kernel condition counts add up.

Files must be readable at the same path on every node (a shared file system); the model
artifact travels through Ray's object store.
"""
