"""The CPU path of BAM, measured on CPUs (benchmarks/RESULTS.md, benchmarks/studies/).

- ``gate``: the fused gate as a C kernel, built at first use and called through ctypes, and
  registered as the CPU kernel of the ``torch_bam::bam_gate`` ops;
- ``block``: which blocks the room takes, their forward with the tricks below, and the
  memory-saving autograd for a whole block in training;
- ``layers``: the spatial gate's CPU tricks (the 1x1 convs as matmuls, narrow maps in NCHW).

Nothing heavy is imported here. ``torch_bam.dispatch`` says when each runs.
"""
