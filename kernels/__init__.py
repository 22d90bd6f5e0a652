"""convlab Triton kernels and their launchers, one module per op family.

``conv2d``: implicit-GEMM forward / input-grad / weight-grad; ``depthwise``: the
depthwise path; ``inspect``: ahead-of-time compile check (``python -m kernels.inspect``).
Kernels know nothing of modules or autograd; see ``layers`` for those.
"""
