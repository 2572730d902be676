"""Nipype interface: extract raw ROI mean signals of one BOLD run for several atlases."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from brainfm.atlases import Atlas, custom_atlas, get_atlas
from brainfm.processing.parcellate import ParcelSignals, extract_roi_signals


def resolve_atlases(names: list[str], atlas_file: str | Path | None = None,
                    atlas_labels: str | Path | None = None,
                    atlas_name: str = "Custom") -> list[Atlas]:
    """Resolve bundled/TemplateFlow atlas names plus an optional user atlas.

    Parameters
    ----------
    names : list of str
        Atlas names (``CC200``, ``Schaefer2018-400`` ...).
    atlas_file, atlas_labels : path, optional
        A user atlas: a 3-D label image in the BOLD's standard space and its ``index``/``name``
        table.
    atlas_name : str
        The BIDS ``atlas-`` label of the user atlas.
    """
    atlases = [get_atlas(name) for name in names]
    if atlas_file:
        atlases.append(custom_atlas(atlas_file, atlas_labels, atlas_name))
    return atlases


def save_parcel_signals(path: Path, signals: dict[str, ParcelSignals]) -> Path:
    """Store extracted signals of several atlases in one ``.npz`` (no pickled objects)."""
    arrays: dict[str, np.ndarray] = {"atlases": np.array(sorted(signals), dtype=str)}
    for label, sig in signals.items():
        arrays[f"{label}__timeseries"] = np.asarray(sig.timeseries, dtype=np.float64)
        arrays[f"{label}__roi_names"] = np.array(sig.roi_names, dtype=str)
        arrays[f"{label}__coverage"] = np.asarray(sig.coverage, dtype=np.float64)
        arrays[f"{label}__low_coverage"] = np.array(sig.low_coverage, dtype=str)
    np.savez(path, **arrays)
    return path


def load_parcel_signals(path: str | Path) -> dict[str, ParcelSignals]:
    """Read signals written by :func:`save_parcel_signals`."""
    with np.load(path, allow_pickle=False) as data:
        return {
            str(label): ParcelSignals(
                timeseries=data[f"{label}__timeseries"],
                roi_names=[str(n) for n in data[f"{label}__roi_names"]],
                coverage=data[f"{label}__coverage"],
                low_coverage=[str(n) for n in data[f"{label}__low_coverage"]],
            )
            for label in data["atlases"]
        }


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
