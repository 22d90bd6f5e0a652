"""Render a study's report from its runs: ``python -m experiments.report NAME [args...]``.

Alias of ``python -m experiments.reports`` (the studies and the dispatcher live in experiments/reports/);
``python -m experiments.report`` lists the studies, ``NAME --help`` gives a study's arguments.
"""
import sys

from experiments.reports import main, studies  # noqa: F401  (re-exported: the command and its list)

if __name__ == "__main__":
    sys.exit(main())
