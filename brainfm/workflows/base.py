"""Top-level nipype workflows: one sub-workflow per participant, one branch per BOLD run."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from brainfm.interfaces.denoise import DenoiseROISignals
from brainfm.interfaces.outputs import ParticipantDerivativesSink
from brainfm.interfaces.parcellate import ExtractROISignals
from brainfm.interfaces.reports import ParticipantReport
from brainfm.workflows.predict import init_predict_wf


def run_node_name(run: dict) -> str:
    """A node-name-safe identifier of a run, e.g. ``ses1_taskrest_run2``."""
    return "_".join(f"{k}{v}" for k, v in run["entities"].items() if k != "sub")


def init_postproc_wf(run: dict, settings: dict, name: str) -> pe.Workflow:
    """Parcellate and denoise one BOLD run.

    Parameters
    ----------
    run : dict
        The run's inputs: ``entities``, ``space``, ``bold_file``, ``mask_file``,
        ``confounds_file``, ``repetition_time`` (see
        :meth:`brainfm.bidsapp.inputs.BoldRun.to_dict`).
    settings : dict
        ``atlases``, ``atlas_file``, ``atlas_labels``, ``atlas_name``, ``min_coverage``,
        ``strategy``, ``fd_thresh``, ``dummy_scans``, ``lower_bpf``, ``upper_bpf``, ``min_time``.
    name : str
        Workflow name.

    Outputs
    -------
    outputnode.result_dir
        Folder with the run's denoised time series, connectivity, coverage and QC.
    outputnode.signals_file
        The raw ROI signals (before denoising) of every atlas.
    """
    wf = pe.Workflow(name=name)
    extract = pe.Node(
        ExtractROISignals(
            bold_file=run["bold_file"], mask_file=run["mask_file"],
            atlases=list(settings["atlases"]), min_coverage=settings["min_coverage"],
            atlas_name=settings["atlas_name"],
        ),
        name="extract_roi_signals",
    )
    extract.inputs.atlas_images = dict(run.get("atlas_images") or {})
    if settings.get("atlas_file"):
        extract.inputs.atlas_file = str(settings["atlas_file"])
        extract.inputs.atlas_labels = str(settings["atlas_labels"])
    denoise = pe.Node(
        DenoiseROISignals(
            confounds_file=run["confounds_file"], repetition_time=run["repetition_time"],
            strategy=settings["strategy"], fd_thresh=settings["fd_thresh"],
            dummy_scans=settings["dummy_scans"], lower_bpf=settings["lower_bpf"],
            upper_bpf=settings["upper_bpf"], min_time=settings["min_time"],
        ),
        name="denoise",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["result_dir", "signals_file"]),
                         name="outputnode")
    wf.connect([
        (extract, denoise, [("signals_file", "signals_file")]),
        (extract, outputnode, [("signals_file", "signals_file")]),
        (denoise, outputnode, [("result_dir", "result_dir")]),
    ])
    return wf


def init_single_subject_wf(subject: str, runs: list[dict], settings: dict,
                           output_dir: Path) -> pe.Workflow:
    """All runs of one participant, then one sink that writes them when every run succeeded,
    (with ``settings["model_dir"]``) the predictions of each session, and the HTML report."""
    wf = pe.Workflow(name=f"single_subject_{subject}_wf")
    merge = pe.Node(niu.Merge(len(runs)), name="merge_runs", run_without_submitting=True)
    merge_signals = pe.Node(niu.Merge(len(runs)), name="merge_signals",
                            run_without_submitting=True)
    sink = pe.Node(
        ParticipantDerivativesSink(runs=list(runs), output_dir=str(output_dir),
                                   settings=dict(settings)),
        name="ds_participant", run_without_submitting=True,
    )
    sink.overwrite = True  # always (re)write outputs, even when upstream results are cached
    report = pe.Node(ParticipantReport(output_dir=str(output_dir), subject=subject,
                                       runs=list(runs)), name="participant_report")
    report.overwrite = True
    written = pe.Node(niu.Merge(2), name="merge_written", run_without_submitting=True)
    for index, run in enumerate(runs, start=1):
        run_wf = init_postproc_wf(run, settings, name=f"postproc_{run_node_name(run)}_wf")
        wf.connect([
            (run_wf, merge, [("outputnode.result_dir", f"in{index}")]),
            (run_wf, merge_signals, [("outputnode.signals_file", f"in{index}")]),
        ])
    wf.connect([
        (merge, sink, [("out", "result_dirs")]),
        (merge_signals, report, [("out", "signals_files")]),
        (sink, written, [("out_files", "in1")]),
        (written, report, [("out", "written_files")]),
    ])
    if settings.get("model_dir"):
        predict_wf = init_predict_wf(runs, settings["model_dir"], settings["model_atlas"],
                                     output_dir, settings.get("device", "cpu"))
        wf.connect([
            (merge, predict_wf, [("out", "inputnode.result_dirs")]),
            (predict_wf, written, [("outputnode.out_files", "in2")]),
        ])
    else:
        written.inputs.in2 = []
    return wf


def init_brainfm_wf(runs_by_subject: dict[str, list[dict]], settings: dict,
                    output_dir: Path, work_dir: Path) -> pe.Workflow:
    """The participant-level workflow over every selected participant."""
    wf = pe.Workflow(name="brainfm_wf", base_dir=str(work_dir))
    for subject, runs in sorted(runs_by_subject.items()):
        wf.add_nodes([init_single_subject_wf(subject, runs, settings, output_dir)])
    return wf
