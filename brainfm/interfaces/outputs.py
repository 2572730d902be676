"""Nipype interface: write one participant's derivatives into the output dataset."""

from __future__ import annotations

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from brainfm.participant_outputs import write_subject_outputs


class _SinkInputSpec(BaseInterfaceInputSpec):
    result_dirs = traits.List(Directory(exists=True), mandatory=True,
                              desc="per-run result folders, in the order of runs")
    runs = traits.List(traits.Dict, mandatory=True, desc="run descriptions (entities, files, TR)")
    output_dir = Directory(mandatory=True, desc="output dataset root")
    settings = traits.Dict(mandatory=True, desc="denoising settings for the sidecars")


class _SinkOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc="files written")


class ParticipantDerivativesSink(SimpleInterface):
    """Name, annotate and atomically write all runs of one participant."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        self._results["out_files"] = write_subject_outputs(
            list(self.inputs.result_dirs), list(self.inputs.runs), self.inputs.output_dir,
            dict(self.inputs.settings),
        )
        return runtime
