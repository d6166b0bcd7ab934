"""Analysis of a w2s results directory: PGR with bootstrap CIs, weak→strong cascades,
calibration, and the paper's tables and plots. Entry point: ``w2s-analyze`` (`analysis.cli`).

Modules: runs (load the run store), predictions (read prediction files), pgr, stats (bootstrap),
cascade, cascade_runs, calibration, tables, plots, synthetic (fake run stores for tests).
"""
