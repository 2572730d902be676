"""The model stage of the participant workflow: predictions from the denoised ROI series."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from brainfm.interfaces.predict import PredictParticipant


def init_predict_wf(runs: list[dict], model_dir: str | Path, atlas_label: str,
                    output_dir: str | Path, device: str = "cpu",
                    name: str = "predict_wf") -> pe.Workflow:
    """Predict every target of one participant, per session, with a brainfm model.

    Parameters
    ----------
    runs : list of dict
        The participant's run descriptions (order of ``inputnode.result_dirs``).
    model_dir : path
        Model folder (safetensors weights + model card).
    atlas_label : str
        BIDS label of the model's atlas.
    output_dir : path
        Output dataset root (predictions and expert weights are written there).
    device : str
        ``cpu`` or ``cuda``.
    name : str
        Workflow name.

    Inputs
    ------
    inputnode.result_dirs
        The runs' denoising result folders.

    Outputs
    -------
    outputnode.out_files
        The predictions and expert-weight files written.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["result_dirs"]), name="inputnode")
    predict = pe.Node(
        PredictParticipant(runs=list(runs), model_dir=str(model_dir), atlas_label=atlas_label,
                           output_dir=str(output_dir), device=device),
        name="predict",
    )
    predict.overwrite = True  # outputs live outside the work dir: always (re)write them
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    wf.connect([
        (inputnode, predict, [("result_dirs", "result_dirs")]),
        (predict, outputnode, [("out_files", "out_files")]),
    ])
    return wf
