"""Nipype interface: extract raw ROI mean signals of one BOLD run for several atlases."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from brainfm.atlases import resolve_atlases
from brainfm.postproc.parcellate import extract_roi_signals, save_parcel_signals


class _ExtractInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="preprocessed BOLD in a standard space")
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the BOLD grid")
    atlases = traits.List(traits.Str, mandatory=True, desc="atlas names")
    atlas_file = File(exists=True, desc="user atlas label image")
    atlas_labels = File(exists=True, desc="user atlas index/name table")
    atlas_name = traits.Str("Custom", usedefault=True, desc="BIDS label of the user atlas")
    min_coverage = traits.Float(0.5, usedefault=True, desc="minimum ROI coverage")
    atlas_images = traits.Dict(traits.Str, traits.Str, desc="atlas label to the image to use "
                               "instead of its own (the atlas placed in the BOLD's space)")


class _ExtractOutputSpec(TraitedSpec):
    signals_file = File(exists=True, desc="ROI signals, coverage and names of every atlas (.npz)")


class ExtractROISignals(SimpleInterface):
    """Average the BOLD over each parcel of each atlas (the atlas resampled to the BOLD grid)."""

    input_spec = _ExtractInputSpec
    output_spec = _ExtractOutputSpec

    def _run_interface(self, runtime):
        atlases = resolve_atlases(
            self.inputs.atlases,
            self.inputs.atlas_file or None,
            self.inputs.atlas_labels or None,
            self.inputs.atlas_name,
        )
        images = self.inputs.atlas_images if isdefined(self.inputs.atlas_images) else {}
        atlases = [replace(a, image=Path(images[a.label])) if a.label in images else a
                   for a in atlases]
        signals = extract_roi_signals(self.inputs.bold_file, atlases, self.inputs.mask_file,
                                      min_coverage=self.inputs.min_coverage)
        out = save_parcel_signals(Path(runtime.cwd) / "roi_signals.npz", signals)
        self._results["signals_file"] = str(out)
        return runtime
