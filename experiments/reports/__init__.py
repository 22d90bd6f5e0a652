"""One module per study report (``main(argv) -> int``), run by ``python -m experiments.report NAME``."""
