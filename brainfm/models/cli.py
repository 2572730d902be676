"""``brainfm-train``: pretrain, fine-tune, cross-validate and apply brainfm models.

::

    brainfm-train pretrain DERIV [DERIV ...] --atlas CC200 -o runs/lmae
    brainfm-train finetune DERIV [DERIV ...] --atlas CC200 --init runs/lmae \\
        --target age --target fluid_intelligence=PIQ -o runs/model
    brainfm-train cv DERIV [DERIV ...] --atlas CC200 --target age --folds 5 --group-by site \\
        -o runs/cv
    brainfm-train ensemble DERIV [DERIV ...] --atlas CC200 --target age \\
        --target fluid_intelligence=PIQ --site-column site -o runs/ensemble
    brainfm-train predict --model runs/model DERIV [DERIV ...] -o predictions.tsv

``ensemble`` fits the recipe the default model ships with (:mod:`brainfm.models.stacking`):
LMAE pretraining, site-bagged network members for age, a ridge member on connectivity per
target, stacking and calibrated intervals from held-out-site residuals.

Options can also come from ``--config file.yaml|.toml`` holding the same keys (long option names,
``-`` or ``_``), or ``--config recommended``, the configuration of the default model shipped in
the package (:data:`~brainfm.models.options.RECOMMENDED_CONFIG`); options given on the command
line win. Errors print
``brainfm-train: error: <message>`` and exit with the error's code (64 usage, 66 missing input).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brainfm import __version__
from brainfm.errors import UsageArgumentParser, UsageError, run_command
from brainfm.logs import add_verbose_option, setup_logging
from brainfm.models.model import BrainFMConfig

PROG = "brainfm-train"

#: Training options (TrainOptions fields) and their types, as on the command line.
_TRAIN_KEYS: dict[str, type] = {
    "atlas": str, "sampling_rate_hz": float, "epochs": int, "pretrain_epochs": int,
    "batch_size": int, "lr": float, "weight_decay": float, "warmup": float, "patience": int,
    "val_fraction": float, "draws_per_session": int, "stride": int, "seed": int, "device": str,
    "threads": int, "grad_clip": float,
}
#: Model options: every BrainFMConfig field except n_rois/targets, with its type.
_MODEL_KEYS: dict[str, type] = {}
for _f in dataclasses.fields(BrainFMConfig):
    if _f.name not in {"n_rois", "targets"}:
        _MODEL_KEYS[_f.name] = {"int": int, "float": float, "bool": bool}.get(str(_f.type), str)
#: Command-specific keys a config file may hold.
_OTHER_KEYS = {"targets", "init", "participants_tsv", "folds", "group_by", "protocol",
               "members", "site_column", "exclude", "recipe", "name", "license", "terms",
               "target_note", "band_edges", "no_recalibration"}


def _bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _add_common(p: argparse.ArgumentParser, data: bool = True) -> None:
    S = argparse.SUPPRESS
    if data:
        p.add_argument("deriv", nargs="+", type=Path, metavar="DERIV",
                       help="derivatives folder(s) with ROI time series")
        p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    g = p.add_argument_group("training")
    g.add_argument("--config", metavar="FILE|recommended",
                   help="YAML or TOML file with these options, or 'recommended' (the "
                   "configuration of the shipped default model)")
    g.add_argument("--atlas", default=S,
                   help="atlas of the time series: the atlas- label of the files or the "
                   "name given to brainfm --atlases (Schaefer2018-200 finds atlas-Schaefer200; "
                   "default CC200)")
    g.add_argument("--device", default=S, help="cpu (default) or cuda[:N]")
    g.add_argument("--seed", type=int, default=S, help="random seed (default 0)")
    g.add_argument("--epochs", type=int, default=S, help="maximum epochs (default 40)")
    g.add_argument("--batch-size", type=int, default=S, help="windows per step (default 32)")
    g.add_argument("--lr", type=float, default=S, help="peak learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=float, default=S, help="AdamW weight decay (0.05)")
    g.add_argument("--warmup", type=float, default=S,
                   help="fraction of steps of linear warm-up before cosine decay (0.05)")
    g.add_argument("--patience", type=int, default=S, help="early-stopping patience (8)")
    g.add_argument("--val-fraction", type=float, default=S,
                   help="fraction of subjects for inner validation (0.15)")
    g.add_argument("--draws-per-session", type=int, default=S,
                   help="random windows per session and epoch (1)")
    g.add_argument("--stride", type=int, default=S,
                   help="sliding-window step for validation/prediction (window/2)")
    g.add_argument("--sampling-rate-hz", type=float, default=S,
                   help="common sampling rate of the inputs (0.5 Hz = TR 2 s)")
    g.add_argument("--threads", type=int, default=S, help="torch CPU threads")
    g.add_argument("--grad-clip", type=float, default=S, help="gradient-norm clip (1.0)")
    m = p.add_argument_group("model (defaults: BrainFMConfig)")
    m.add_argument("--window", type=int, default=S, help="window length in samples")
    for key, typ in _MODEL_KEYS.items():
        if key == "window":
            continue
        flag = "--" + key.replace("_", "-")
        default = getattr(BrainFMConfig, key, None)
        m.add_argument(flag, type=_bool if typ is bool else typ, default=S,
                       metavar="BOOL" if typ is bool else None,
                       help=f"BrainFMConfig.{key} (default {default})")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``brainfm-train`` parser.

    Returns
    -------
    argparse.ArgumentParser
        Parser with the pretrain, finetune, cv and predict subcommands.
    """
    parser = UsageArgumentParser(prog=PROG, description="Train and apply brainfm models.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_verbose_option(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=UsageArgumentParser)
    pre = sub.add_parser("pretrain", help="LMAE masked-reconstruction pretraining (no labels)")
    _add_common(pre)
    fin = sub.add_parser("finetune", help="supervised training of the targets")
    _add_common(fin)
    _add_targets(fin)
    fin.add_argument("--init", type=Path, default=argparse.SUPPRESS,
                     help="pretraining checkpoint whose encoder initialises the model")
    cv = sub.add_parser("cv", help="cross-validation (pretraining inside each fold)")
    _add_common(cv)
    _add_targets(cv)
    cv.add_argument("--folds", type=int, default=argparse.SUPPRESS, help="K (default 5)")
    cv.add_argument("--group-by", default=argparse.SUPPRESS,
                    help="participants.tsv column to stratify by (default site; 'none' for none)")
    cv.add_argument("--protocol", choices=["stratified-kfold", "leave-group-out"],
                    default=argparse.SUPPRESS, help="default stratified-kfold")
    cv.add_argument("--pretrain-epochs", type=int, default=argparse.SUPPRESS,
                    help="LMAE epochs inside each fold (default --epochs; 0 = no pretraining)")
    cv.add_argument("--recipe", choices=["ensemble", "network"], default=argparse.SUPPRESS,
                    help="ensemble (default): the deployed recipe of 'ensemble', with ridge, "
                    "kernel ridge and training-mean baselines on the same folds; network: the "
                    "single network")
    cv.add_argument("--members", type=int, default=argparse.SUPPRESS,
                    help="--recipe ensemble: network members = inner site folds (default 3)")
    _add_recipe_options(cv)
    ens = sub.add_parser("ensemble", help="the shipped recipe: site-bagged members stacked "
                         "with a linear member, calibrated intervals")
    _add_common(ens)
    _add_targets(ens)
    ens.add_argument("--members", type=int, default=argparse.SUPPRESS,
                     help="network members = inner site folds (default 3)")
    ens.add_argument("--site-column", default=argparse.SUPPRESS,
                     help="participants.tsv column of the acquisition site (default site)")
    ens.add_argument("--pretrain-epochs", type=int, default=argparse.SUPPRESS,
                     help="LMAE epochs (default --epochs; 0 = no pretraining)")
    ens.add_argument("--exclude", nargs="+", default=argparse.SUPPRESS, metavar="LABEL",
                     help="participants to leave out of training")
    _add_recipe_options(ens)
    _add_card_options(ens)
    prd = sub.add_parser("predict", help="predict with a trained model")
    prd.add_argument("deriv", nargs="+", type=Path, metavar="DERIV")
    prd.add_argument("--model", required=True, help="checkpoint folder or 'default'")
    prd.add_argument("-o", "--output", type=Path, required=True, help="predictions TSV")
    prd.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    prd.add_argument("--stride", type=int, default=None, help="sliding-window step")
    prd.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    prd.add_argument("--participant-label", nargs="+", default=None,
                     help="only these participants (with or without sub-)")
    return parser


def _add_recipe_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-recalibration", dest="no_recalibration", action="store_true",
                   default=argparse.SUPPRESS,
                   help="do not offer the out-of-fold slope/intercept inversion to the inner "
                   "choice (on ABIDE it was chosen in 1 of 22 outer folds, by 0.001 y, and cost "
                   "4.5 y on the held-out site; docs/model_card.md)")
    p.add_argument("--band-edges", type=float, nargs="+", default=argparse.SUPPRESS,
                   metavar="YEARS",
                   help="inner edges of the age bands that split the intervals, the reliable "
                   "range and the balanced metrics (default 13 18 30; e.g. 30 45 60 75 for an "
                   "adult cohort)")


def _add_card_options(p: argparse.ArgumentParser) -> None:
    c = p.add_argument_group("model card (brainfm.models.model_card)")
    c.add_argument("--name", default=argparse.SUPPRESS, help="model name on the card")
    c.add_argument("--license", default=argparse.SUPPRESS,
                   help="licence of the weights (e.g. inherited from the training data)")
    c.add_argument("--terms", default=argparse.SUPPRESS,
                   help="terms of use and credits, in full")
    c.add_argument("--target-note", dest="target_note", action="append",
                   default=argparse.SUPPRESS, metavar="TARGET=TEXT",
                   help="plain-words caveat of a target shown beside its predictions "
                   "(repeatable)")


def _add_targets(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", dest="targets", action="append", default=argparse.SUPPRESS,
                   metavar="NAME[=COLUMN]",
                   help="target, e.g. age or fluid_intelligence=PIQ (repeatable)")
    p.add_argument("--participants-tsv", type=Path, default=argparse.SUPPRESS,
                   help="targets table (default: first DERIV/participants.tsv)")


def config_path(value: str | Path) -> Path:
    """The file a ``--config`` value names.

    Parameters
    ----------
    value : str or Path
        A file, or the string ``recommended``
        (:data:`~brainfm.models.options.RECOMMENDED_CONFIG_NAME`; write ``./recommended`` for a
        file of that name).

    Returns
    -------
    Path
        :data:`~brainfm.models.options.RECOMMENDED_CONFIG` for ``recommended``, else ``value``.
    """
    from brainfm.models.options import RECOMMENDED_CONFIG, RECOMMENDED_CONFIG_NAME

    if isinstance(value, str) and value == RECOMMENDED_CONFIG_NAME:
        return RECOMMENDED_CONFIG
    return Path(value)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML options file.

    Parameters
    ----------
    path : str or Path
        ``.yaml``/``.yml`` or ``.toml`` file with option keys (``-`` or ``_``); an optional
        ``model`` table holds model options; or ``recommended`` (:func:`config_path`).

    Returns
    -------
    dict
        Keys normalised to ``_`` form, ``model`` table merged in.

    Raises
    ------
    UsageError
        Unknown keys or unreadable file.
    """
    path = config_path(path)
    if not path.is_file():
        raise UsageError(f"--config {path}: file not found")
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError as exc:  # Python 3.10
                raise UsageError("TOML configs need Python >= 3.11; use YAML") from exc
            raw = tomllib.loads(path.read_text())
        else:
            import yaml

            raw = yaml.safe_load(path.read_text()) or {}
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"--config {path}: cannot parse ({exc})") from exc
    if not isinstance(raw, dict):
        raise UsageError(f"--config {path}: expected a mapping of options")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        k = str(key).replace("-", "_")
        if k == "model" and isinstance(value, dict):
            flat.update({str(mk).replace("-", "_"): mv for mk, mv in value.items()})
        else:
            flat[k] = value
    if "target" in flat:
        flat["targets"] = flat.pop("target")
    if isinstance(flat.get("targets"), str):
        flat["targets"] = [flat["targets"]]
    known = set(_TRAIN_KEYS) | set(_MODEL_KEYS) | _OTHER_KEYS
    unknown = sorted(set(flat) - known)
    if unknown:
        raise UsageError(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    return flat


def load_options(path: str | Path) -> Any:
    """Training options from a YAML or TOML file (the keys of ``--config``).

    Parameters
    ----------
    path : str or Path
        The file, or ``recommended`` (:func:`config_path`).

    Returns
    -------
    TrainOptions
        Options; keys the file does not set keep their defaults.

    Raises
    ------
    UsageError
        Unknown keys, bad values or an unreadable file.
    """
    return _options(read_config_file(path))


def _options(values: dict[str, Any]) -> Any:
    from brainfm.models.options import TrainOptions

    opts = TrainOptions()
    model: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key in _TRAIN_KEYS:
            try:
                setattr(opts, key, _TRAIN_KEYS[key](value))
            except (TypeError, ValueError) as exc:
                raise UsageError(f"option {key}: bad value {value!r}") from exc
        elif key in _MODEL_KEYS:
            typ = _MODEL_KEYS[key]
            try:
                model[key] = _bool(value) if typ is bool and isinstance(value, str) else typ(value)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                raise UsageError(f"option {key}: bad value {value!r}") from exc
    opts.model = model
    _check_options(opts)
    return opts


def _check_options(opts: Any) -> None:
    positive = ("epochs", "batch_size", "draws_per_session")
    for key in positive:
        if getattr(opts, key) < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be >= 1")
    if opts.lr <= 0 or opts.sampling_rate_hz <= 0:
        raise UsageError("--lr and --sampling-rate-hz must be positive")
    if not 0 <= opts.val_fraction < 1:
        raise UsageError("--val-fraction must be in [0, 1)")
    if opts.patience < 1:
        raise UsageError("--patience must be >= 1")
    if opts.stride is not None and opts.stride < 1:
        raise UsageError("--stride must be >= 1")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``brainfm-train``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, else the :class:`~brainfm.errors.BrainfmError` exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return run_command(PROG, lambda: _run(args))
    finally:
        from brainfm.models.runtime import teardown

        teardown()


def _run(args: argparse.Namespace) -> int:
    from brainfm.models.cross_validation import run_cv
    from brainfm.models.runs import run_finetune, run_predict, run_pretrain
    from brainfm.models.targets import parse_target_spec

    for path in getattr(args, "deriv", []):
        if not path.is_dir():
            from brainfm.errors import InputError

            raise InputError(f"derivatives folder not found: {path}")
    if args.command == "predict":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        run_predict(args.model, args.deriv, args.output, device=args.device,
                          participants=args.participant_label, stride=args.stride)
        return 0
    values: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        values.update(read_config_file(args.config))
    cli = {k: v for k, v in vars(args).items()
           if k not in {"command", "verbose", "config", "deriv", "output"}}
    values.update(cli)
    opts = _options(values)
    specs = [parse_target_spec(t) for t in values.get("targets") or []]
    ptsv = values.get("participants_tsv")
    if args.command == "pretrain":
        run_pretrain(args.deriv, args.output, opts)
    elif args.command == "finetune":
        run_finetune(args.deriv, args.output, specs, opts, init=values.get("init"),
                           participants_tsv=ptsv)
    elif args.command == "ensemble":
        from brainfm.models.model_card import CardInfo, parse_target_notes
        from brainfm.models.stacking import run_ensemble

        notes = values.get("target_note") or []
        card_info = CardInfo(
            name=values.get("name"), license=values.get("license"), terms=values.get("terms"),
            target_notes=parse_target_notes([notes] if isinstance(notes, str) else notes,
                                            [s.name for s in specs]))
        run_ensemble(args.deriv, args.output, specs, opts,
                     pretrain_epochs=values.get("pretrain_epochs"),
                     site_column=str(values.get("site_column", "site")), participants_tsv=ptsv,
                     exclude=values.get("exclude") or (), recipe=_recipe(values),
                     card_info=card_info)
    else:
        group = values.get("group_by", "site")
        group = None if group is None or str(group).lower() == "none" else str(group)
        folds, protocol = int(values.get("folds", 5)), str(values.get("protocol",
                                                                      "stratified-kfold"))
        if str(values.get("recipe", "ensemble")) == "network":
            run_cv(args.deriv, args.output, specs, opts, n_folds=folds, group_by=group,
                   protocol=protocol, participants_tsv=ptsv)
        else:
            from brainfm.models.recipe_cv import run_recipe_cv, summary_text

            report = run_recipe_cv(args.deriv, args.output, specs, opts, n_folds=folds,
                                   group_by=group, protocol=protocol, participants_tsv=ptsv,
                                   recipe=_recipe(values))
            print(summary_text(report))
    return 0


def _recipe(values: dict[str, Any]) -> Any:
    """The recipe's options (``--members``, ``--band-edges``, ``--no-recalibration``), checked."""
    from brainfm.ages import MAX_AGE
    from brainfm.models.stacking import RecipeOptions

    members = int(values.get("members", 3))
    if members < 2:
        raise UsageError("--members must be >= 2 (each member holds out other sites)")
    recal = (False,) if values.get("no_recalibration") else RecipeOptions.recalibration_candidates
    if "band_edges" not in values:
        return RecipeOptions(n_members=members, recalibration_candidates=recal)
    edges = [float(e) for e in (values["band_edges"] if isinstance(values["band_edges"], list)
                                else [values["band_edges"]])]
    if not all(0 < e < MAX_AGE for e in edges) or sorted(set(edges)) != edges:
        raise UsageError(f"--band-edges {' '.join(f'{e:g}' for e in edges)}: give increasing "
                         "ages in years between 0 and 120, e.g. --band-edges 30 45 60 75")
    return RecipeOptions(n_members=members, band_edges=tuple(edges),
                         recalibration_candidates=recal)


if __name__ == "__main__":
    sys.exit(main())
