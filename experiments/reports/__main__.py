"""``python -m experiments.reports NAME [args...]``: see experiments/reports/__init__.py."""
import sys

from experiments.reports import main

sys.exit(main())
