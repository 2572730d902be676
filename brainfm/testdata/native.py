"""A raw BIDS BOLD fixture in a native (scanner) space, with planted head motion and slice timing.

:func:`make_native_dataset` starts from the painted MNI-space fixture of
:func:`brainfm.testdata.make_dataset` (one subject, ``motion=False``: a clean image without the
motion artefact) and "acquires" it in a scanner:

1. **Head image in MNI space**: the painted BOLD (baseline, CC200 parcel signals, physiological
   nuisance, white noise) plus a static, EPI-like anatomy made from the bundled
   MNI152NLin6Asym T1w template (inverted contrast: CSF bright, grey matter brighter than
   white matter; brain voxels the painting does not reach get the painted baseline level) and a
   faint scalp shell separated from the brain by a dark skull gap. The static part is constant
   over time, so it does not change any ROI time series.
2. **Head position**: a known affine ``head_to_scanner`` (a few degrees of rotation about each
   axis, several mm of translation and a head size that differs from the template by a few %)
   maps MNI coordinates to scanner coordinates.
3. **Head motion**: per volume, a rigid displacement ``P_t`` in the scanner frame (smooth
   drifts plus two sudden shifts, up to about 1.5 mm and 1.5 degrees on every axis; volume 0 is
   the reference, ``P_0 = I``), with the conventions of :mod:`brainfm.preproc.realign`.
4. **Acquisition**: a coarser grid (4 mm voxels by default) stored left-to-right flipped (LAS,
   as many scanners write), interleaved axial slices with a ``SliceTiming`` table: slice *k* of
   volume *t* samples the head at ``t * TR + SliceTiming[k]``. The painted volume *t* is the
   brain at time ``t * TR + t_ref``, with ``t_ref`` the middle of the slice times (the
   reference time of fMRIPrep-style slice-timing correction); in between, the painted series
   is interpolated in time (Catmull-Rom). Gaussian noise is added and the image is rounded to
   int16.

The raw dataset (``out_dir/bids``) holds only this BOLD run and its sidecar
(``RepetitionTime``, ``SliceTiming``, ``SliceEncodingDirection``, ``TaskName``): no derivatives.
The painted MNI-space files are moved to ``out_dir/reference/fmriprep`` (for comparisons), the
painted ground truth stays in ``out_dir/truth`` and the acquisition truth is written to
``out_dir/truth/native.json`` and ``<run>_native_truth.npz``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from brainfm.errors import InputError, UsageError
from brainfm.preproc.realign import MOTION_COLUMNS, fov_center, rigid_matrix
from brainfm.preproc.templates import template_brain_mask, template_t1w_file
from brainfm.testdata.maker import make_dataset
from brainfm.testdata.truth import DatasetTruth

#: Default head position: rotations (degrees about x, y, z), translation (mm), scaling.
DEFAULT_ROTATION_DEG = (6.0, -4.0, 5.0)
DEFAULT_TRANSLATION_MM = (4.0, -12.0, 16.0)
DEFAULT_SCALE = (1.04, 0.96, 1.02)
#: Field of view of the native grid (mm, x y z).
FOV_MM = (240.0, 240.0, 152.0)
#: Largest planted motion per parameter (mm for translations, degrees for rotations).
MOTION_AMPLITUDE = (1.5, 1.5, 1.5, 1.5, 1.5, 1.5)
#: Level of the EPI-like static anatomy (added to the painted baseline of about 1100).
ANATOMY_LEVEL = 800.0
#: Level of the brain voxels that the painted image does not cover (the painted baseline).
UNPAINTED_LEVEL = 1100.0
#: Level of the scalp shell.
SCALP_LEVEL = 250.0


@dataclass(frozen=True)
class NativeDatasetTruth:
    """What :func:`make_native_dataset` wrote, and the truth of the simulated acquisition.

    Attributes
    ----------
    out_dir : pathlib.Path
        The folder given to :func:`make_native_dataset`.
    bids_dir : pathlib.Path
        Raw BIDS dataset (``out_dir/bids``) with no derivatives.
    raw_bold : pathlib.Path
        The native-space BOLD run.
    subject, task : str
        Its labels (``01``, ``rest``).
    painted : DatasetTruth
        The painted MNI-space fixture (its derivatives moved to ``reference_dir``).
    reference_dir : pathlib.Path
        The painted fMRIPrep-style derivatives (``out_dir/reference/fmriprep``).
    truth_file : pathlib.Path
        The painted ground truth (``roi_signal``, ``roi_nuisance``, ...; see
        :func:`brainfm.testdata.make_dataset`).
    native_truth_file : pathlib.Path
        The acquisition truth (``motion_params``, ``motion_matrices``, ``head_to_scanner``,
        ``native_affine``, ``slice_times``).
    tr : float
        Repetition time (s).
    n_volumes : int
        Number of volumes.
    voxel_size : float
        Native voxel size (mm).
    slice_times : tuple of float or None
        ``SliceTiming`` (s), None when slice timing was not simulated.
    reference_time : float
        Time within each TR (s) at which the painted volumes are sampled (``t_ref``).
    motion_params : numpy.ndarray
        (T, 6) planted head motion (``trans_x .. rot_z``, mm and radians, scanner frame,
        rotations about the native field-of-view centre).
    motion_matrices : numpy.ndarray
        (T, 4, 4) the same as head-to-scanner rigid transforms.
    head_to_scanner : numpy.ndarray
        4 x 4 affine from MNI coordinates to the scanner coordinates of volume 0.
    native_affine : numpy.ndarray
        4 x 4 voxel-to-scanner affine of the raw BOLD.
    """

    out_dir: Path
    bids_dir: Path
    raw_bold: Path
    subject: str
    task: str
    painted: DatasetTruth
    reference_dir: Path
    truth_file: Path
    native_truth_file: Path
    tr: float
    n_volumes: int
    voxel_size: float
    slice_times: tuple[float, ...] | None
    reference_time: float
    motion_params: np.ndarray
    motion_matrices: np.ndarray
    head_to_scanner: np.ndarray
    native_affine: np.ndarray

    def load_truth(self) -> dict[str, np.ndarray]:
        """Load the painted ground truth of the run (see :func:`make_dataset`).

        Returns
        -------
        dict of str to numpy.ndarray
            ``roi_signal``, ``roi_nuisance``, ``roi_baseline``, ``roi_voxels``, ...
        """
        with np.load(self.truth_file, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def expected_roi_series(self) -> np.ndarray:
        """The time-varying part of each CC200 parcel's mean BOLD (without white noise).

        Returns
        -------
        numpy.ndarray
            (T, 200) ``roi_signal + roi_nuisance`` of the painted truth.
        """
        truth = self.load_truth()
        return truth["roi_signal"] + truth["roi_nuisance"]


def _affine_from(rotation_deg: tuple[float, float, float], translation: tuple[float, float, float],
                 scale: tuple[float, float, float]) -> np.ndarray:
    """MNI -> scanner: scale, then rotate about the MNI origin, then translate."""
    rot = rigid_matrix([0.0, 0.0, 0.0, *np.deg2rad(rotation_deg)], [0.0, 0.0, 0.0])
    m = rot @ np.diag([*scale, 1.0])
    m[:3, 3] = translation
    return m


def _native_grid(voxel_size: float, center: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """LAS-stored axial grid of ``FOV_MM`` centred on ``center`` (scanner mm)."""
    shape = tuple(int(round(f / voxel_size)) for f in FOV_MM)
    affine = np.diag([-voxel_size, voxel_size, voxel_size, 1.0])
    mid = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = center - affine[:3, :3] @ mid
    return shape, affine  # type: ignore[return-value]


def _interleaved_slice_times(n_slices: int, tr: float) -> np.ndarray:
    """Interleaved ascending acquisition (0, 2, 4, ..., 1, 3, ...), spread over the TR."""
    order = list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))
    times = np.empty(n_slices)
    step = tr / n_slices
    for position, k in enumerate(order):
        times[k] = round(position * step, 4)
    return times


def _plant_motion(rng: np.random.Generator, n: int, amplitude: np.ndarray) -> np.ndarray:
    """Smooth drifts plus two sudden shifts on every parameter; volume 0 at rest."""
    params = np.zeros((n, 6))
    t = np.arange(n)
    for j in range(6):
        drift = np.cumsum(rng.standard_normal(n))
        drift = ndimage.gaussian_filter1d(drift, sigma=3.0, mode="nearest")
        drift -= drift[0]
        drift /= max(np.abs(drift).max(), 1e-12)
        steps = np.zeros(n)
        for start in np.sort(rng.choice(np.arange(n // 5, n - 3), size=2, replace=False)):
            steps[t >= start] += rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.5)
        series = 0.7 * drift + steps
        series -= series[0]
        series *= amplitude[j] / max(np.abs(series).max(), 1e-12)
        params[:, j] = series
    return params


def _catmull_rom(frac: float) -> np.ndarray:
    """Weights of samples at -1, 0, 1, 2 for a point ``frac`` in [0, 1) after sample 0."""
    f = float(frac)
    return np.array([
        -0.5 * f**3 + f**2 - 0.5 * f,
        1.5 * f**3 - 2.5 * f**2 + 1.0,
        -1.5 * f**3 + 2.0 * f**2 + 0.5 * f,
        0.5 * f**3 - 0.5 * f**2,
    ])


def _static_head(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """EPI-like static anatomy on the template's 2 mm grid (see the module docstring)."""
    t1w_img = nib.load(template_t1w_file())
    t1w = np.asarray(t1w_img.dataobj, dtype=np.float64)
    brain = template_brain_mask()
    if t1w.shape != brain.shape or t1w.shape != shape:
        raise InputError("the bundled template and brain mask are not on the same grid: "
                         "reinstall brainfm")
    scale = np.percentile(t1w[brain], 95)
    epi_like = np.clip(1.0 - t1w / scale, 0.0, 1.0)
    voxel = float(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).mean())
    outside = ndimage.distance_transform_edt(~brain) * voxel
    scalp = ((outside > 6.0) & (outside < 12.0)).astype(np.float64)
    scalp = ndimage.gaussian_filter(scalp, 1.0) * SCALP_LEVEL
    head = np.where(brain, ANATOMY_LEVEL * epi_like, 0.0) + scalp
    return head


def make_native_dataset(
    out_dir: str | Path,
    *,
    n_volumes: int = 70,
    tr: float = 2.0,
    voxel_size: float = 4.0,
    seed: int = 0,
    rotation_deg: tuple[float, float, float] = DEFAULT_ROTATION_DEG,
    translation_mm: tuple[float, float, float] = DEFAULT_TRANSLATION_MM,
    scale: tuple[float, float, float] = DEFAULT_SCALE,
    motion_amplitude: tuple[float, ...] = MOTION_AMPLITUDE,
    slice_timing: bool = True,
    noise_sd: float = 4.0,
    abide_dir: str | Path | None = None,
    overwrite: bool = False,
) -> NativeDatasetTruth:
    """Write a raw BIDS dataset whose BOLD run is the painted fixture acquired in native space.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Output folder: ``bids/``, ``truth/`` and ``reference/`` are written in it.
    n_volumes : int
        Number of volumes.
    tr : float
        Repetition time (s).
    voxel_size : float
        Isotropic native voxel size (mm), 2-6.
    seed : int
        Random seed (painted signals, motion, noise).
    rotation_deg, translation_mm, scale : tuple of float
        The head position: MNI coordinates are scaled, rotated (degrees about x, y, z, applied
        x first) and translated (mm) into scanner coordinates.
    motion_amplitude : tuple of float
        Largest planted displacement of each of the six parameters (mm, mm, mm, degrees,
        degrees, degrees); zeros plant no motion.
    slice_timing : bool
        Simulate interleaved slice acquisition and write ``SliceTiming``.
    noise_sd : float
        SD of the Gaussian noise added in native space (the painted baseline is about 1100 and
        a parcel's neural signal has an SD of about 10).
    abide_dir : str or pathlib.Path, optional
        Paint real ABIDE PCP CC200 series (see :func:`make_dataset`).
    overwrite : bool
        Replace an earlier fixture in ``out_dir``.

    Returns
    -------
    NativeDatasetTruth
        Paths and truth.

    Raises
    ------
    UsageError
        Bad options, or the output exists and ``overwrite`` is not set.
    """
    if not 2.0 <= float(voxel_size) <= 6.0:
        raise UsageError(f"voxel_size must be between 2 and 6 mm, got {voxel_size}")
    if len(motion_amplitude) != 6:
        raise UsageError("motion_amplitude needs six values (3 translations, 3 rotations)")
    out = Path(out_dir)
    reference_root = out / "reference"
    if reference_root.exists():
        if not overwrite:
            raise UsageError(f"{reference_root} already exists (use overwrite=True)")
        shutil.rmtree(reference_root)
    painted = make_dataset(out, n_subjects=1, n_volumes=n_volumes, tr=tr, voxel_size=3.0,
                           motion=False, abide_dir=abide_dir, seed=seed, overwrite=overwrite)
    run = painted.runs[0]
    rng = np.random.default_rng([seed, 1789])

    # painted (dynamic) image on its cropped 3 mm MNI grid
    bold_img = nib.load(run.preproc_bold)
    dynamic = np.asarray(bold_img.dataobj, dtype=np.float32)
    dyn_affine = bold_img.affine
    painted_brain = np.asarray(nib.load(run.brain_mask).dataobj) > 0
    # static head on the template's 2 mm grid
    t1w_img = nib.load(template_t1w_file())
    static = _static_head(t1w_img.shape, t1w_img.affine)
    unpainted = template_brain_mask() & ~_painted_on_template(painted_brain, dyn_affine,
                                                               t1w_img.shape, t1w_img.affine)
    static += np.where(unpainted, UNPAINTED_LEVEL, 0.0)

    # scanner geometry
    head_to_scanner = _affine_from(tuple(rotation_deg), tuple(translation_mm), tuple(scale))
    brain_center_mni = np.array([0.0, -18.0, 18.0, 1.0])
    fov_centre = (head_to_scanner @ brain_center_mni)[:3]
    shape, native_affine = _native_grid(float(voxel_size), fov_centre)
    center = fov_center(shape, native_affine)
    amplitude = np.asarray(motion_amplitude, dtype=np.float64)
    amplitude[3:] = np.deg2rad(amplitude[3:])
    params = _plant_motion(rng, n_volumes, amplitude)
    matrices = np.stack([rigid_matrix(p, center) for p in params])
    n_slices = shape[2]
    if slice_timing:
        times = _interleaved_slice_times(n_slices, tr)
        t_ref = float(times.min() + 0.5 * (times.max() - times.min()))
    else:
        times = np.zeros(n_slices)
        t_ref = 0.0

    data = _acquire(dynamic, dyn_affine, static, t1w_img.affine, native_affine, shape,
                    head_to_scanner, matrices, (times - t_ref) / tr)
    data += rng.standard_normal(data.shape).astype(np.float32) * np.float32(noise_sd)
    raw = np.clip(np.rint(data), 0, np.iinfo(np.int16).max).astype(np.int16)

    # write the raw run, drop the painted derivatives from the raw dataset
    bids = painted.bids_dir
    reference_root.mkdir(parents=True)
    reference = reference_root / "fmriprep"
    shutil.move(str(painted.fmriprep_dir), str(reference))
    derivatives = bids / "derivatives"
    if derivatives.is_dir() and not any(derivatives.iterdir()):
        derivatives.rmdir()
    img = nib.Nifti1Image(raw, native_affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((voxel_size,) * 3 + (tr,))
    img.set_qform(native_affine, code=1)
    img.set_sform(native_affine, code=1)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_dim_info(slice=2)
    nib.save(img, run.raw_bold)
    sidecar: dict[str, Any] = {"RepetitionTime": tr, "TaskName": "rest"}
    if slice_timing:
        sidecar["SliceTiming"] = [float(x) for x in times]
        sidecar["SliceEncodingDirection"] = "k"
    run.raw_bold.with_name(run.raw_bold.name.replace(".nii.gz", ".json")).write_text(
        json.dumps(sidecar, indent=2) + "\n"
    )
    (bids / "README").write_text(
        "brainfm native-space test data\n==============================\n\n"
        "Written by brainfm.testdata.native.make_native_dataset for tests of raw-BOLD "
        "preprocessing. The BOLD run is a synthetic fMRI series painted in MNI152NLin6Asym "
        "space (CC200 parcel signals, nuisance, noise) plus a static EPI-like anatomy derived "
        "from the MNI152 template, moved into a scanner space by a known affine, with planted "
        "head motion, interleaved slice timing, 4 mm voxels and added noise. It is not a "
        "real acquisition. The ground truth is outside this dataset (../truth).\n"
    )

    prefix = run.raw_bold.name.replace("_bold.nii.gz", "")
    native_truth = painted.truth_dir / f"{prefix}_native_truth.npz"
    np.savez_compressed(
        native_truth,
        motion_params=params,
        motion_matrices=matrices,
        motion_center=center,
        head_to_scanner=head_to_scanner,
        native_affine=native_affine,
        slice_times=times,
        reference_time=np.float64(t_ref),
    )
    (painted.truth_dir / "native.json").write_text(json.dumps({
        "generator": "brainfm.testdata.native.make_native_dataset",
        "raw_bold": run.raw_bold.relative_to(out).as_posix(),
        "reference_fmriprep_dir": reference.relative_to(out).as_posix(),
        "native_truth": native_truth.relative_to(out).as_posix(),
        "motion_columns": list(MOTION_COLUMNS),
        "motion_convention": "head displacement of volume t relative to volume 0, scanner "
                             "frame, x' = R (x - c) + c + t, R = Rz Ry Rx, c = FOV centre",
        "rotation_deg": list(rotation_deg),
        "translation_mm": list(translation_mm),
        "scale": list(scale),
        "voxel_size": float(voxel_size),
        "shape": list(shape),
        "noise_sd": float(noise_sd),
        "slice_timing": bool(slice_timing),
        "reference_time": t_ref,
        "seed": int(seed),
    }, indent=2) + "\n")
    return NativeDatasetTruth(
        out_dir=out,
        bids_dir=bids,
        raw_bold=run.raw_bold,
        subject=run.subject,
        task="rest",
        painted=painted,
        reference_dir=reference,
        truth_file=run.truth_file,
        native_truth_file=native_truth,
        tr=float(tr),
        n_volumes=int(n_volumes),
        voxel_size=float(voxel_size),
        slice_times=tuple(float(x) for x in times) if slice_timing else None,
        reference_time=t_ref,
        motion_params=params,
        motion_matrices=matrices,
        head_to_scanner=head_to_scanner,
        native_affine=native_affine,
    )


def _painted_on_template(mask: np.ndarray, affine: np.ndarray, shape: tuple[int, ...],
                         target_affine: np.ndarray) -> np.ndarray:
    """The painted brain mask on the template grid (nearest neighbour)."""
    vox = np.linalg.solve(affine, target_affine)
    out = ndimage.affine_transform(mask.astype(np.uint8), vox[:3, :3], vox[:3, 3],
                                   output_shape=shape[:3], order=0, mode="constant", cval=0)
    return out > 0


def _acquire(
    dynamic: np.ndarray,
    dyn_affine: np.ndarray,
    static: np.ndarray,
    static_affine: np.ndarray,
    native_affine: np.ndarray,
    shape: tuple[int, int, int],
    head_to_scanner: np.ndarray,
    matrices: np.ndarray,
    slice_offsets: np.ndarray,
) -> np.ndarray:
    """Sample the moving head on the native grid, slice by slice in time.

    ``slice_offsets[k]`` is the acquisition time of slice k relative to the painted volume's
    time, in volumes (within +-0.5).
    """
    n = dynamic.shape[3]
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    scanner = native_affine[:3, :3] @ ijk + native_affine[:3, 3:4]
    slice_of = np.indices(shape)[2].reshape(-1)
    inv_head = np.linalg.inv(head_to_scanner)
    to_dyn = np.linalg.inv(dyn_affine)
    to_static = np.linalg.inv(static_affine)
    out = np.empty(shape + (n,), dtype=np.float32)
    base = np.floor(slice_offsets).astype(int)  # -1 or 0
    frac = slice_offsets - base
    weights = np.stack([_catmull_rom(f) for f in frac])  # (n_slices, 4)
    for t in range(n):
        # scanner position of volume t -> head (volume 0) position -> MNI
        mni = inv_head @ np.linalg.inv(matrices[t])
        dyn_vox = (to_dyn @ mni)[:3, :3] @ scanner + (to_dyn @ mni)[:3, 3:4]
        st_vox = (to_static @ mni)[:3, :3] @ scanner + (to_static @ mni)[:3, 3:4]
        values = ndimage.map_coordinates(static, st_vox, order=1, mode="constant", cval=0.0)
        acc = np.zeros_like(values)
        for b in np.unique(base):
            in_b = base[slice_of] == b
            for j in range(4):
                tt = int(np.clip(t + b - 1 + j, 0, n - 1))
                w = weights[slice_of[in_b], j]
                acc[in_b] += w * ndimage.map_coordinates(
                    dynamic[..., tt], dyn_vox[:, in_b], order=1, mode="constant", cval=0.0
                )
        out[..., t] = (values + acc).reshape(shape)
    return out
