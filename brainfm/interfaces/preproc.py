"""Nipype interfaces of the raw-BOLD preprocessing: thin wrappers over :mod:`brainfm.preproc`.

The minimal preprocessing (one node per step of :mod:`brainfm.preproc.steps`) and the node that
runs fMRIPrep (:class:`RunFmriprep`).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from brainfm.errors import ProcessingError
from brainfm.preproc.outputs import write_dataset_description, write_run_derivatives
from brainfm.preproc.steps import (
    REALIGN_LOOPS,
    REALIGN_MAXITER,
    REALIGN_SPEEDUP,
    load_registration,
    run_confounds,
    run_motion_estimation,
    run_registration,
    run_resampling,
    run_slice_timing,
)

LOGGER = logging.getLogger(__name__)


def _timing(value: object) -> list[float] | None:
    return list(value) if isdefined(value) and value else None  # type: ignore[arg-type]


def _direction(value: object) -> str | None:
    return str(value) if isdefined(value) and value else None


class _MotionInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="raw BOLD series")
    repetition_time = traits.Float(mandatory=True, desc="TR (s)")
    slice_timing = traits.List(traits.Float, desc="BIDS SliceTiming (s)")
    slice_encoding_direction = traits.Str(desc="BIDS SliceEncodingDirection")
    speedup = traits.List(traits.Int, list(REALIGN_SPEEDUP), usedefault=True,
                          desc="nipy subsampling factor per level")
    loops = traits.List(traits.Int, list(REALIGN_LOOPS), usedefault=True,
                        desc="nipy passes per level")
    maxiter = traits.Int(REALIGN_MAXITER, usedefault=True, desc="optimiser iterations")


class _MotionOutputSpec(TraitedSpec):
    motion_file = File(exists=True, desc="motion.npz (matrices, params, center, rmsd)")


class EstimateHeadMotion(SimpleInterface):
    """Estimate rigid head motion (nipy space-time realignment)."""

    input_spec = _MotionInputSpec
    output_spec = _MotionOutputSpec

    def _run_interface(self, runtime):
        self._results["motion_file"] = str(run_motion_estimation(
            self.inputs.bold_file, runtime.cwd, self.inputs.repetition_time,
            _timing(self.inputs.slice_timing), _direction(self.inputs.slice_encoding_direction),
            speedup=self.inputs.speedup, loops=self.inputs.loops, maxiter=self.inputs.maxiter,
        ))
        return runtime


class _STCInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="raw BOLD series")
    repetition_time = traits.Float(mandatory=True, desc="TR (s)")
    slice_timing = traits.List(traits.Float, desc="BIDS SliceTiming (s); empty: no correction")
    slice_encoding_direction = traits.Str(desc="BIDS SliceEncodingDirection")


class _STCOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="slice-time corrected series (or the input)")
    start_time = traits.Either(None, traits.Float, desc="reference time (s), None if none")


class SliceTimingCorrection(SimpleInterface):
    """Shift every slice to the middle of the slice acquisition times."""

    input_spec = _STCInputSpec
    output_spec = _STCOutputSpec

    def _run_interface(self, runtime):
        out, start = run_slice_timing(
            self.inputs.bold_file, runtime.cwd, self.inputs.repetition_time,
            _timing(self.inputs.slice_timing), _direction(self.inputs.slice_encoding_direction),
        )
        self._results["out_file"] = str(out)
        self._results["start_time"] = start
        return runtime


class _RegisterInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="raw BOLD series")
    motion_file = File(exists=True, mandatory=True, desc="motion.npz")
    similarity = traits.Enum("crl1", "cc", "cr", "mi", "nmi", usedefault=True,
                             desc="similarity of the intensity stage")


class _RegisterOutputSpec(TraitedSpec):
    registration_file = File(exists=True, desc="registration.json")
    mean_file = File(exists=True, desc="realigned mean EPI")


class RegisterToTemplate(SimpleInterface):
    """Affine registration of the realigned mean EPI to MNI152NLin6Asym."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        reg, mean = run_registration(self.inputs.bold_file, self.inputs.motion_file,
                                     runtime.cwd, self.inputs.similarity)
        self._results["registration_file"] = str(reg)
        self._results["mean_file"] = str(mean)
        return runtime


class _ResampleInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="(slice-time corrected) BOLD series")
    motion_file = File(exists=True, mandatory=True, desc="motion.npz")
    registration_file = File(exists=True, mandatory=True, desc="registration.json")
    resolution = traits.Enum(2, 3, usedefault=True, desc="output grid (mm)")


class _ResampleOutputSpec(TraitedSpec):
    bold_file = File(exists=True, desc="standard-space BOLD")
    mask_file = File(exists=True, desc="standard-space brain mask")


class ResampleToTemplate(SimpleInterface):
    """Head-motion correction and normalisation in one resampling per volume."""

    input_spec = _ResampleInputSpec
    output_spec = _ResampleOutputSpec

    def _run_interface(self, runtime):
        bold, mask = run_resampling(self.inputs.bold_file, self.inputs.motion_file,
                                    self.inputs.registration_file, runtime.cwd,
                                    self.inputs.resolution)
        self._results["bold_file"] = str(bold)
        self._results["mask_file"] = str(mask)
        return runtime


class _ConfoundsInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="standard-space BOLD")
    mask_file = File(exists=True, mandatory=True, desc="its brain mask")
    motion_file = File(exists=True, mandatory=True, desc="motion.npz")
    repetition_time = traits.Float(mandatory=True, desc="TR (s)")
    resolution = traits.Enum(2, 3, usedefault=True, desc="grid of bold_file (mm)")


class _ConfoundsOutputSpec(TraitedSpec):
    confounds_file = File(exists=True, desc="confounds TSV")
    confounds_json = File(exists=True, desc="confounds sidecar content")


class ComputeConfounds(SimpleInterface):
    """fMRIPrep-style confounds of the standard-space series."""

    input_spec = _ConfoundsInputSpec
    output_spec = _ConfoundsOutputSpec

    def _run_interface(self, runtime):
        tsv, meta = run_confounds(self.inputs.bold_file, self.inputs.mask_file,
                                  self.inputs.motion_file, self.inputs.repetition_time,
                                  runtime.cwd, self.inputs.resolution)
        self._results["confounds_file"] = str(tsv)
        self._results["confounds_json"] = str(meta)
        return runtime


class _SinkInputSpec(BaseInterfaceInputSpec):
    out_dir = Directory(mandatory=True, desc="fMRIPrep-style derivatives folder")
    bids_dir = Directory(exists=True, mandatory=True, desc="raw BIDS dataset")
    entities = traits.Dict(traits.Str, traits.Str, mandatory=True, desc="short-key entities")
    raw_bold = File(exists=True, mandatory=True, desc="raw BOLD (Sources)")
    repetition_time = traits.Float(mandatory=True, desc="TR (s)")
    resolution = traits.Enum(2, 3, usedefault=True, desc="grid (mm)")
    bold_file = File(exists=True, mandatory=True, desc="standard-space BOLD")
    mask_file = File(exists=True, mandatory=True, desc="brain mask")
    confounds_file = File(exists=True, mandatory=True, desc="confounds TSV")
    confounds_json = File(exists=True, mandatory=True, desc="confounds sidecar content")
    registration_file = File(exists=True, mandatory=True, desc="registration.json (QC)")
    start_time = traits.Either(None, traits.Float, desc="slice-timing reference time (s)")


class _SinkOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="written derivative files")


class MinimalDerivativesSink(SimpleInterface):
    """Write one run's fMRIPrep-style derivatives (atomically, the BOLD image last)."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        write_dataset_description(self.inputs.out_dir, self.inputs.bids_dir)
        start = self.inputs.start_time if isdefined(self.inputs.start_time) else None
        reg = load_registration(self.inputs.registration_file)
        paths = write_run_derivatives(
            self.inputs.out_dir, self.inputs.entities, bold_file=self.inputs.bold_file,
            mask_file=self.inputs.mask_file, confounds_file=self.inputs.confounds_file,
            confounds_json=self.inputs.confounds_json, raw_bold=self.inputs.raw_bold,
            bids_dir=self.inputs.bids_dir, repetition_time=self.inputs.repetition_time,
            resolution=self.inputs.resolution, start_time=start,
            registration={k: reg[k] for k in ("similarity", "stage", "dice")},
        )
        self._results["out_files"] = [str(p) for p in paths.values()]
        return runtime


class _FmriprepInputSpec(BaseInterfaceInputSpec):
    command = traits.List(traits.Str, mandatory=True, minlen=1, desc="argv to run")
    out_dir = Directory(mandatory=True, desc="fMRIPrep output folder")


class _FmriprepOutputSpec(TraitedSpec):
    fmriprep_dir = Directory(exists=True, desc="fMRIPrep derivatives")
    log_file = File(exists=True, desc="fMRIPrep's standard output and error")


class RunFmriprep(SimpleInterface):
    """Run fMRIPrep (native, fmriprep-docker or Apptainer/Singularity) and check its output.

    The command line is logged; fMRIPrep's output goes to ``fmriprep.log`` in the node folder.
    A non-zero exit status, or no ``dataset_description.json`` in the output folder, raises
    :class:`~brainfm.errors.ProcessingError` with the end of the log.
    """

    input_spec = _FmriprepInputSpec
    output_spec = _FmriprepOutputSpec

    def _run_interface(self, runtime):
        command = list(self.inputs.command)
        log_file = Path(runtime.cwd) / "fmriprep.log"
        LOGGER.info("running fMRIPrep: %s", shlex.join(command))
        try:
            with open(log_file, "w", encoding="utf-8") as log:
                log.write(f"$ {shlex.join(command)}\n")
                log.flush()
                status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                        check=False).returncode
        except OSError as exc:
            raise ProcessingError(f"cannot run fMRIPrep ({shlex.join(command)}): {exc}") \
                from exc
        out_dir = Path(self.inputs.out_dir)
        if status != 0 or not (out_dir / "dataset_description.json").is_file():
            lines = log_file.read_text(errors="replace").splitlines()
            tail = " | ".join(line.strip() for line in lines[-5:] if line.strip())
            raise ProcessingError(
                f"fMRIPrep failed (exit status {status}); see {log_file}. Last lines: {tail}"
            )
        self._results["fmriprep_dir"] = str(out_dir)
        self._results["log_file"] = str(log_file)
        return runtime
