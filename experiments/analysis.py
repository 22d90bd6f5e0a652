"""Alias of experiments/reports/analysis.py, kept for the documented command
``python -m experiments.analysis RUNS_DIR... [--metric M] [--csv F] [--plot F] [--out DIR]``
(also ``python -m experiments.report analysis ...``)."""
import sys

from experiments.reports.analysis import main

if __name__ == "__main__":
    sys.exit(main())
