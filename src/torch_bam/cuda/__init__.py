"""The CUDA path of BAM: Triton kernels (``kernels``) and the block's autograd on them.

Nothing heavy is imported here: ``torch_bam.cuda.kernels`` imports triton only when used.
"""
