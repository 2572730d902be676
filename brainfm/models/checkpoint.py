"""Checkpoints: safetensors weights plus a JSON model card, never pickle.

A model folder holds ``model.safetensors`` (the ``state_dict``) and ``model_card.json``. The card
carries what the trainer knows (atlas, ROI names, sampling rate, window, target scaling, training
data, metrics, denoising strategy) plus what :func:`save_checkpoint` adds: ``config``
(:meth:`BrainFMConfig.to_dict`), ``weights_file``, ``weights_sha256``, ``n_parameters``,
``brainfm_version``, ``torch_version`` and ``format_version``. Both files are written atomically
(temporary file in the same folder, then ``os.replace``); the weights go first, so a card on disk
always describes complete weights.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

from ..errors import InputError
from ..fileio import write_atomic
from .ensemble import BrainFMEnsemble, check_spec
from .model import BrainFM, BrainFMConfig

__all__ = [
    "CARD_FILE",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "CheckpointError",
    "load_checkpoint",
    "model_sha256",
    "resolve_model_dir",
    "save_checkpoint",
    "sha256_file",
    "verify_checkpoint",
]

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
#: Version of the checkpoint layout; :func:`load_checkpoint` refuses newer ones. Version 2 adds
#: ensembles (a card with an ``ensemble`` section); single networks are still written as 1.
FORMAT_VERSION = 2

_TRAIN_HINT = ("train one with `brainfm-train` (see `brainfm-train --help`) and pass the folder "
               "it writes")


class CheckpointError(InputError):
    """A model folder is missing, incomplete, corrupt or does not match the data (exit 66)."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file.

    Parameters
    ----------
    path : path-like
        File to hash.

    Returns
    -------
    str
        Lower-case hexadecimal digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: Key of the model hash that :func:`verify_checkpoint` and :func:`load_checkpoint` add to
#: the card they return (never written into a card file).
MODEL_HASH_KEY = "model_sha256"


def model_sha256(card: dict[str, Any], weights_sha256: str) -> str:
    """SHA-256 of a model: its weights and its card, so that an edited card is another model.

    The digest of ``b"brainfm-model\\0"``, the weights file's SHA-256 (hex) and the card as
    canonical JSON (sorted keys, no spaces, UTF-8; without :data:`MODEL_HASH_KEY`). Computed
    when a model is loaded, so the card file need not record it.

    Parameters
    ----------
    card : dict
        The model card as read from ``model_card.json``.
    weights_sha256 : str
        SHA-256 of ``model.safetensors`` (hex).

    Returns
    -------
    str
        Lower-case hexadecimal digest.
    """
    body = {k: v for k, v in card.items() if k != MODEL_HASH_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           allow_nan=False)
    h = hashlib.sha256(b"brainfm-model\0")
    h.update(weights_sha256.encode("ascii"))
    h.update(b"\0")
    h.update(canonical.encode("utf-8"))
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy/torch scalars and arrays to Python, paths to str, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy scalars and arrays
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"model card value {obj!r} of type {type(obj).__name__} is not JSON-ready")


def _brainfm_version() -> str:
    from .. import __version__

    return str(__version__)


def save_checkpoint(out_dir: str | os.PathLike[str], model: BrainFM | BrainFMEnsemble,
                    card: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``model_card.json`` into ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        Folder to write (created with its parents when missing).
    model : BrainFM or BrainFMEnsemble
        The model; its ``state_dict`` is saved on the CPU. An ensemble's card gets its
        ``ensemble`` section (members, combination, calibration).
    card : dict
        Model card from the trainer (atlas, roi_names, sampling_rate_hz, window, targets,
        training, metrics, denoising_strategy, ...). It is not modified; the written card adds
        ``config``, ``weights_file``, ``weights_sha256``, ``n_parameters``,
        ``brainfm_version``, ``torch_version`` and ``format_version``. Numpy values become
        plain JSON, non-finite floats become null.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    weights = out / WEIGHTS_FILE
    write_atomic(weights, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    full = {k: v for k, v in card.items() if k != MODEL_HASH_KEY}  # computed at load time
    if isinstance(model, BrainFMEnsemble):
        full["ensemble"] = model.spec
    full.update({
        "config": model.config.to_dict() if model.config is not None else None,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_file(weights),
        "n_parameters": int(sum(v.numel() for v in state.values())),
        "brainfm_version": _brainfm_version(),
        "torch_version": str(torch.__version__),
        "format_version": FORMAT_VERSION if isinstance(model, BrainFMEnsemble) else 1,
    })
    text = json.dumps(_jsonable(full), indent=2, allow_nan=False) + "\n"
    write_atomic(out / CARD_FILE, lambda p: p.write_text(text, encoding="utf-8"))
    return out


def _not_a_folder(folder: Path) -> str:
    """Why ``folder`` (not a folder) cannot be a model folder, in words, with the fix."""
    if folder.is_symlink():
        target = os.readlink(folder)
        try:
            folder.resolve(strict=True)
        except (RuntimeError, OSError) as exc:
            if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
                return (f"model folder {folder} is a symbolic link that loops ({folder} -> "
                        f"{target}); point it at the model folder")
            return (f"model folder {folder} is a symbolic link to {target}, which does not "
                    "exist; point it at the model folder")
    if folder.exists():
        hint = (f"; give its folder {folder.parent}" if folder.name in (CARD_FILE, WEIGHTS_FILE)
                else "")
        return (f"--model {folder} is a file, not a model folder (a folder holding {CARD_FILE} "
                f"and {WEIGHTS_FILE}){hint}")
    return f"model folder {folder} does not exist; {_TRAIN_HINT}"


def _read_card(card_path: Path) -> dict[str, Any]:
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read model card {card_path}: {exc}") from exc
    if not isinstance(card, dict):
        raise CheckpointError(f"model card {card_path} is not a JSON object")
    return card


def verify_checkpoint(
    model_dir: str | os.PathLike[str],
    expected_atlas: str | None = None,
    expected_roi_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every check of :func:`load_checkpoint`, without reading the weights; returns the card.

    The files, the card's format, the weights' SHA-256, the card's targets against what its
    model predicts, the atlas and ROI names, and the card's architecture against the weights'
    tensor shapes (the model built under an element budget,
    weights not loaded). The participant level calls it before any work; its prediction node
    then loads the model.

    Returns
    -------
    dict
        The card, with ``model_sha256`` (weights and card, :func:`model_sha256`) added.

    Raises
    ------
    CheckpointError
        As :func:`load_checkpoint`.
    """
    return _verified_model(Path(model_dir), expected_atlas, expected_roi_names)[0]


def _verified_model(folder: Path, expected_atlas: str | None,
                    expected_roi_names: Sequence[str] | None
                    ) -> tuple[dict[str, Any], BrainFM | BrainFMEnsemble]:
    """The card and the (untrained) model it describes, after every check."""
    card_path = folder / CARD_FILE
    weights_path = folder / WEIGHTS_FILE
    if not folder.is_dir():
        raise CheckpointError(_not_a_folder(folder))
    for p in (card_path, weights_path):
        if not p.is_file():
            raise CheckpointError(f"model file {p} is missing: the folder {folder} is not a "
                                  f"complete brainfm model; {_TRAIN_HINT}")
    card = _read_card(card_path)
    version = card.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"model card {card_path} has format_version {version!r}; this "
                              f"brainfm reads format_version <= {FORMAT_VERSION} (upgrade brainfm)")
    expected_hash = card.get("weights_sha256")
    if not isinstance(expected_hash, str):
        raise CheckpointError(f"model card {card_path} has no weights_sha256")
    actual = sha256_file(weights_path)
    if actual != expected_hash:
        raise CheckpointError(f"weights file {weights_path} does not match its model card "
                              f"{card_path} (sha256 {actual} != {expected_hash}): the file is "
                              "corrupt or was replaced")
    _check_targets(card, card_path)
    card = {**card, MODEL_HASH_KEY: model_sha256(card, actual)}
    if expected_atlas is not None and card.get("atlas") != expected_atlas:
        raise CheckpointError(f"model {card_path} was trained on atlas {card.get('atlas')!r} but "
                              f"the data use atlas {expected_atlas!r}; choose the matching atlas "
                              "or a model trained on it")
    if expected_roi_names is not None:
        names = card.get("roi_names")
        wanted = [str(r) for r in expected_roi_names]
        if not isinstance(names, list):
            raise CheckpointError(f"model card {card_path} lists no roi_names to check the data's "
                                  f"{len(wanted)} ROIs against")
        if len(names) != len(wanted):
            raise CheckpointError(f"model {card_path} expects {len(names)} ROIs but the data have "
                                  f"{len(wanted)}")
        for i, (a, b) in enumerate(zip(names, wanted, strict=True)):
            if a != b:
                raise CheckpointError(f"model {card_path} expects ROI {a!r} in column {i + 1} but "
                                      f"the data have {b!r} there (ROI order differs)")
    spec = card.get("ensemble")
    try:
        if spec is not None:
            check_spec(spec, str(card_path))
            configs = [BrainFMConfig.from_dict(m["config"]) for m in spec["members"]]
        else:
            configs = [BrainFMConfig.from_dict(card.get("config") or {})]
    except InputError as exc:
        raise CheckpointError(str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"model card {card_path} has an invalid config: {exc}") from exc
    names = card.get("roi_names")
    for config in configs:
        if isinstance(names, list) and len(names) != config.n_rois:
            raise CheckpointError(f"model card {card_path} lists {len(names)} roi_names but its "
                                  f"config has n_rois={config.n_rois}")
    return card, _build_checked(spec, configs[0], weights_path, card_path)


def _target_names(targets: Any) -> list[Any] | None:
    if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
        return None
    return [t.get("name") for t in targets]


def _check_targets(card: dict[str, Any], card_path: Path) -> None:
    """The card's targets must be the ones its model predicts (an edited card is refused).

    ``targets`` names the prediction columns; the network's config (``config.targets``) or, for
    an ensemble, its ``ensemble.targets`` and each member's ``targets`` and config say what the
    weights were trained to predict. They are written together by :func:`save_checkpoint`, so
    any difference means the card was edited after training.
    """
    names = _target_names(card.get("targets", []))
    fix = "the card was edited after training; restore the model_card.json saved with the weights"
    if names is None:
        raise CheckpointError(f"model card {card_path} has a malformed targets list; {fix}")
    spec = card.get("ensemble")
    if isinstance(spec, dict):
        predicted = _target_names(spec.get("targets"))
        if predicted is not None and predicted != names:
            raise CheckpointError(
                f"model card {card_path} lists targets {names} but its ensemble predicts "
                f"{predicted}; {fix}")
        for i, member in enumerate(spec.get("members") or []):
            if not isinstance(member, dict):
                continue
            own = _target_names(member.get("targets"))
            trained = (member.get("config") or {}).get("targets")
            if own is not None and (not set(own) <= set(names) or (
                    isinstance(trained, list) and list(trained) != own)):
                raise CheckpointError(
                    f"model card {card_path}: ensemble member {i} predicts {trained} with "
                    f"targets {own}, not among the card's targets {names}; {fix}")
        return
    trained = (card.get("config") or {}).get("targets")
    if names and isinstance(trained, list) and list(trained) != names:
        raise CheckpointError(f"model card {card_path} lists targets {names} but its network "
                              f"was trained to predict {list(trained)}; {fix}")


def load_checkpoint(
    model_dir: str | os.PathLike[str],
    expected_atlas: str | None = None,
    expected_roi_names: Sequence[str] | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[BrainFM | BrainFMEnsemble, dict[str, Any]]:
    """Load a model folder written by :func:`save_checkpoint` (safetensors only, no pickle).

    Parameters
    ----------
    model_dir : path-like
        Folder with ``model.safetensors`` and ``model_card.json``.
    expected_atlas : str, optional
        Atlas of the data the model will see; must equal ``card["atlas"]``.
    expected_roi_names : sequence of str, optional
        ROI names of the data, in column order; must equal ``card["roi_names"]`` (same length,
        same order).
    map_location : str or torch.device
        Device of the loaded weights.

    Returns
    -------
    model : BrainFM or BrainFMEnsemble
        The model in eval mode (an ensemble when the card has an ``ensemble`` section).
    card : dict
        The model card, with ``model_sha256`` (:func:`model_sha256`: weights and card) added.

    Raises
    ------
    CheckpointError
        Missing files, unreadable card, unsupported format, hash mismatch, atlas or ROI mismatch,
        or weights that do not fit the card's config. The message names the file.
    """
    folder = Path(model_dir)
    card, model = _verified_model(folder, expected_atlas, expected_roi_names)
    card_path, weights_path = folder / CARD_FILE, folder / WEIGHTS_FILE
    try:
        state = load_file(str(weights_path), device=str(torch.device(map_location)))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"cannot read weights file {weights_path}: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights file {weights_path} does not fit the config in "
                              f"{card_path}: {exc}") from exc
    model.to(torch.device(map_location))
    model.eval()
    return model, card


class _ElementBudget(TorchFunctionMode):
    """Refuse a tensor factory call that would take a model build past ``limit`` elements.

    Every parameter and buffer of a :class:`BrainFM` starts as one of these calls, so a model
    card asking for ``d_model`` 10^7 fails on the first oversized tensor, before allocating it.
    (PyTorch's ``meta`` device would cost no memory either, but its first random fill imports
    ``torch._dynamo`` and ``sympy``: about 1.3 s of every participant run.)
    """

    _FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn,
                            torch.full})

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.used = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func in self._FACTORIES:
            size = kwargs.get("size", args[0] if args else ())
            if isinstance(size, int):  # the varargs form, empty(3, 4)
                size = args
            self.used += math.prod(int(n) for n in size)
            if self.used > self.limit:
                raise CheckpointError(f"the card asks for more than {self.limit} model elements")
        return func(*args, **kwargs)


def _build_checked(spec: dict[str, Any] | None, config: BrainFMConfig, weights_path: Path,
                   card_path: Path) -> BrainFM | BrainFMEnsemble:
    """Build the card's model and check it against the weights' tensor shapes.

    The card is not covered by the weights' hash, so the model it describes is built under an
    element budget (twice the weights' elements, :class:`_ElementBudget`): a card asking for a
    huge model fails here, not in a 9 GB allocation. Returns the model (weights not loaded).
    """
    try:
        with safe_open(str(weights_path), framework="pt") as weights:
            found = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}
        budget = _ElementBudget(2 * sum(math.prod(s) for s in found.values()) + 2**20)
        # the build's random initialisation must not move the caller's random stream
        with budget, torch.random.fork_rng(devices=[]):
            model = BrainFMEnsemble(spec) if spec is not None else BrainFM(config)
        expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    except CheckpointError as exc:
        raise CheckpointError(f"model card {card_path} does not describe its weights "
                              f"{weights_path}: {exc}, more than the weights hold. Restore the "
                              "card that was saved with the weights.") from None
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"model card {card_path} or its weights {weights_path} cannot be "
                              f"read as a brainfm model: {exc}") from exc
    if expected != found:
        wrong = sorted(k for k in expected.keys() | found.keys()
                       if expected.get(k) != found.get(k))
        name = wrong[0]
        raise CheckpointError(
            f"model card {card_path} does not describe its weights {weights_path}: "
            f"{len(wrong)} tensor(s) differ, e.g. {name} is {found.get(name)} in the weights but "
            f"{expected.get(name)} by the card. Restore the card that was saved with the weights.")
    return model


def resolve_model_dir(name: str | os.PathLike[str]) -> Path:
    """Folder of a model: ``"default"`` is the packaged model, anything else a path.

    Parameters
    ----------
    name : str or path-like
        ``"default"`` (``brainfm/data/models/default`` inside the installed package) or a folder.

    Returns
    -------
    Path
        The folder, which holds ``model_card.json``.

    Raises
    ------
    CheckpointError
        The folder or its model card is missing.
    """
    if isinstance(name, str) and name == "default":
        folder = Path(str(resources.files("brainfm.data") / "models" / "default"))
        if not (folder / CARD_FILE).is_file():
            raise CheckpointError(f"no default model is installed (expected {folder / CARD_FILE}); "
                                  f"{_TRAIN_HINT}")
        return folder
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise CheckpointError(_not_a_folder(folder))
    if not (folder / CARD_FILE).is_file():
        raise CheckpointError(f"model folder {folder} has no {CARD_FILE}; {_TRAIN_HINT}")
    return folder
