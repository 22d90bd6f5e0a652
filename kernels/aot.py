"""``python -m kernels.aot``: the ahead-of-time compile check and static speed proxies, the same
command as ``python -m kernels.inspect`` (same options, same exit status); see that module."""
from __future__ import annotations

import sys

from .inspect import main

if __name__ == "__main__":
    sys.exit(main())
