"""Reports rendered from runs' ``summary.json`` files, one module per study (``main(argv) -> int``):
``python -m experiments.reports NAME [args...]`` (alias ``python -m experiments.report NAME``; run it
with ``NAME --help`` for a study's arguments, with no arguments for the list of studies).
``analysis`` is the generic table of any sweep (alias ``python -m experiments.analysis``);
``deep_roots``, ``detection`` and ``upsampling`` are the studies' own reports.
"""
from __future__ import annotations

import importlib
import json
import math
import pkgutil
import sys
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Callable


def load_finished_runs(dirs: list[Path], section: str, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """Every finished run's ``summary.json`` under ``dirs`` that has the study's ``section`` key,
    with its path under ``_path``; unreadable files are skipped. ``skipped`` (when given) receives a
    line for each run of the study left out because it did not finish (its status and error)."""
    runs = []
    for d in dirs:
        for path in sorted(Path(d).rglob("summary.json")):
            try:
                s = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if s.get("status") != "finished" and skipped is not None and (
                    section in s or section == s.get("task_name")):
                skipped.append(f"{s.get('status', '?')}: {path}" + (f" ({s['error']})" if s.get("error") else ""))
            if section not in s or s.get("status") != "finished":
                continue
            s["_path"] = str(path)
            runs.append(s)
    return runs


def report_inputs(study: str, doc: str, argv: list[str] | None) -> tuple[list[dict[str, Any]], Path] | None:
    """The shared command line of a study report: ``RUNS_DIR... [--out DIR]``. Returns the finished
    runs of ``study`` and the (created) output folder, or None (after saying so) when there are none."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m experiments.report {study}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run or sweep folders (searched for summary.json)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <first run dir>/report)")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.runs if not Path(d).exists()]
    if missing:
        print(f"error: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return None
    skipped: list[str] = []
    runs = load_finished_runs(args.runs, study, skipped)
    if skipped:
        print(f"left out, not finished ({len(skipped)}):\n  " + "\n  ".join(skipped), file=sys.stderr)
    if not runs:
        print(f"no finished {study} runs (summary.json with {study!r}) under {[str(d) for d in args.runs]}")
        return None
    out = args.out or args.runs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    return runs, out


def study_main(study: str, doc: str, argv: list[str] | None, aggregate: Callable[[list[dict[str, Any]]], Any],
               render: Callable[[Any], str], plot: Callable[[Any, Path], Path | None], figure: str,
               caption: str) -> int:
    """A study report's ``main``: its command line (:func:`report_inputs`), then ``results =
    aggregate(runs)``, ``plot(results, out / figure)`` (the figure's path, or None when there is
    nothing to draw) and into ``out``: ``report.md`` (``render(results)``, then the figure's link
    with ``caption``) and ``results.json``. Prints the markdown and where it went; returns the exit
    code (1: no finished runs)."""
    inputs = report_inputs(study, doc, argv)
    if inputs is None:
        return 1
    runs, out = inputs
    results = aggregate(runs)
    fig = plot(results, out / figure)
    text = render(results) + (f"\n![{caption}]({fig.name})\n" if fig else "")
    (out / "report.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(text)
    print(f"written to {out}" + (f" (figure: {fig})" if fig else ""))
    return 0


def markdown_table(columns: list[str], rows: list[list]) -> str:
    """A markdown table: the header of ``columns``, its rule, then one line per row of cells (each
    written with ``str``); no trailing newline."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(map(str, cells)) + " |" for cells in rows]
    return "\n".join(lines)


def finite(values: list) -> list[float]:
    """The values that are neither missing (None) nor NaN, as floats."""
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def mean_std(values: list, spec: str, scale: float = 1.0) -> str:
    """``mean ± std`` (sample std) of the :func:`finite` values times ``scale``, each formatted with
    ``spec`` (the std without a ``+`` sign); one value alone has no ± part; none: ``n/a``."""
    values = [v * scale for v in finite(values)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(mean(values), spec)} ± {format(stdev(values), spec.lstrip('+'))}"


_USAGE = """Render a study's report from its runs: python -m experiments.reports NAME [args...]
(alias: python -m experiments.report NAME [args...]). Run NAME --help for its arguments."""


def studies() -> list[str]:
    """The report modules of this package (the names ``main`` accepts), sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = studies()
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE)
        print("studies:", ", ".join(names) or "(none)")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"unknown study {name!r}; available: {', '.join(names) or '(none)'}", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"experiments.reports.{name}").main(rest) or 0)
