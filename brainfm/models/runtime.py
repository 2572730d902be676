"""Training runtime: determinism, devices and ``torchrun`` distribution.

Training is deterministic for a given seed on CPU: ``torch.manual_seed``, numpy generators, window
draws seeded by ``(seed, epoch, item)``, a seeded DataLoader shuffle with ``num_workers=0`` and
``torch.use_deterministic_algorithms(True)``. Under ``torchrun`` (``WORLD_SIZE`` > 1) the process
group is initialised (gloo on CPU, nccl on CUDA), batches are split with a
:class:`~torch.utils.data.distributed.DistributedSampler`, the model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`, and only rank 0 logs and writes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from brainfm.errors import UsageError
from brainfm.models.options import TrainOptions


@dataclass
class DistContext:
    """Process layout of a run (single process unless started by ``torchrun``).

    Attributes
    ----------
    world_size : int
        Number of processes.
    rank : int
        This process' rank.
    device : torch.device
        Device of this process.
    """

    world_size: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        """True under ``torchrun`` with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that logs and writes)."""
        return self.rank == 0


def setup(opts: TrainOptions) -> DistContext:
    """Seed, choose the device, set determinism and join a ``torchrun`` process group.

    Parameters
    ----------
    opts : TrainOptions
        Run options (``device``, ``seed``, ``threads``).

    Returns
    -------
    DistContext
        Rank, world size and device of this process.

    Raises
    ------
    UsageError
        CUDA requested but unavailable, or an unknown device.
    """
    dev = str(opts.device)
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but no CUDA device is available")
    elif dev != "cpu":
        raise UsageError(f"--device must be cpu or cuda[:N], not {dev!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(dev)
    if world > 1:
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if dev.startswith("cuda"):
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if rank != 0:
            logging.getLogger("brainfm").setLevel(logging.WARNING)
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    seed_everything(opts.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    return DistContext(world_size=world, rank=rank, device=device)


def teardown() -> None:
    """Leave the ``torchrun`` process group, if one was joined (no-op otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed torch's CPU and CUDA generators (numpy generators are seeded where they are made).

    Parameters
    ----------
    seed : int
        The seed.
    """
    torch.manual_seed(int(seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(int(seed))


def state_hash(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (to compare runs).

    Parameters
    ----------
    model : torch.nn.Module
        The model.

    Returns
    -------
    str
        Hex digest over the state dict in key order.
    """
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
