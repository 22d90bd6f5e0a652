"""convlab benchmarks: convlab's Triton ops timed against cuDNN (F.conv2d) and torchvision.ops.deform_conv2d.

    python -m benchmarks.bench --dry-run --family depthwise --dtype bf16   # CPU: validate + AOT compile
    python -m benchmarks.bench                                               # GPU: full run
    python -m benchmarks.report benchmarks/results/<file>.json               # Markdown + PNG
"""
