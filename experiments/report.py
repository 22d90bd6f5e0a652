"""Render a study's report from its runs: ``python -m experiments.report NAME [args...]``.

Each study lives in ``experiments/reports/NAME.py`` with ``main(argv) -> int``; run
``python -m experiments.report NAME --help`` for its arguments. ``python -m experiments.report``
lists the studies.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys


def studies() -> list[str]:
    import experiments.reports as reports

    return sorted(m.name for m in pkgutil.iter_modules(reports.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = studies()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("studies:", ", ".join(names) or "(none)")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"unknown study {name!r}; available: {', '.join(names) or '(none)'}", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"experiments.reports.{name}").main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
