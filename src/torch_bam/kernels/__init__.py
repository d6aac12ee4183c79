"""Private fused kernels for :func:`torch_bam.functional.bam_gate`; imported lazily."""
