"""Post-processing (after fMRIPrep or brainfm.preproc), as XCP-D calls it: confounds,
censoring, streamed parcellation, denoising, connectivity.

Plain functions, tested directly; the nipype interfaces in :mod:`brainfm.interfaces` wrap them.
"""
