"""brainfm.models: the PyTorch model (LMAE encoder, RWMoE, selective SSM), losses and checkpoints.

Usable as a plain PyTorch library: nothing here imports :mod:`brainfm.bidsapp` or
:mod:`brainfm.workflows`.
"""

from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    resolve_model_dir,
    save_checkpoint,
    verify_checkpoint,
)
from .ensemble import BrainFMEnsemble
from .lmae import LMAE, local_span_mask, random_token_mask
from .model import BrainFM, BrainFMConfig, ModelOutput, fisher_z_connectivity, gaussian_nll
from .rwmoe import RWMoE, connectivity_graph, load_balancing_loss, random_walk_matrix
from .ssm import MambaBlock, SSMEncoder, selective_scan, selective_scan_ref

__all__ = [
    "LMAE",
    "RWMoE",
    "BrainFM",
    "BrainFMConfig",
    "BrainFMEnsemble",
    "CheckpointError",
    "MambaBlock",
    "ModelOutput",
    "SSMEncoder",
    "connectivity_graph",
    "fisher_z_connectivity",
    "gaussian_nll",
    "load_balancing_loss",
    "load_checkpoint",
    "verify_checkpoint",
    "local_span_mask",
    "random_token_mask",
    "random_walk_matrix",
    "resolve_model_dir",
    "save_checkpoint",
    "selective_scan",
    "selective_scan_ref",
]
