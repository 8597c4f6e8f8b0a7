"""Frame pipeline stages: decode + assemble, corrections, statistics, ROI and preview binning.

Pure functions that take ``xp`` (NumPy or CuPy) from their inputs; the fused CPU kernels live in
:mod:`.kernels`. The engine (runtime) decides where and on which thread they run.
"""
