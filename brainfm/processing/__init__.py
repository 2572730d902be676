"""Signal processing on ROI time series: confounds, censoring, parcellation, denoising,
connectivity.

Plain functions, tested directly; the nipype interfaces in :mod:`brainfm.interfaces` wrap them.
"""
