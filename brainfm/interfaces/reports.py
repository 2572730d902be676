"""Nipype interface: the participant's HTML report, once its derivatives are written."""

from __future__ import annotations

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from brainfm.reports.participant_report import participant_report, run_key


class _ReportInputSpec(BaseInterfaceInputSpec):
    output_dir = Directory(mandatory=True, desc="output dataset root")
    subject = traits.Str(mandatory=True, desc="participant label")
    runs = traits.List(traits.Dict, mandatory=True, desc="run descriptions")
    signals_files = traits.List(File(exists=True), mandatory=True,
                                desc="raw ROI signals of each run (for the 'before' carpet)")
    written_files = traits.List(traits.Str, desc="derivatives written before the report "
                                                 "(orders the report after the writers)")


class _ReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="sub-<label>.html")


class ParticipantReport(SimpleInterface):
    """Carpet plots before/after denoising, censoring, connectivity and predictions."""

    input_spec = _ReportInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        raw = {run_key(run["entities"]): path
               for run, path in zip(self.inputs.runs, self.inputs.signals_files, strict=True)}
        self._results["out_report"] = str(
            participant_report(self.inputs.output_dir, self.inputs.subject, raw))
        return runtime
