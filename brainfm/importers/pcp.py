"""Import ABIDE I Preprocessed Connectomes Project (PCP) ROI time series as brainfm derivatives.

PCP publishes one ``<FILE_ID>_rois_<atlas>.1D`` file per subject (tab-separated text, header
``#1 ... #N`` where column ``#k`` is label ``k`` of the atlas image, then one row per volume),
either in a ``rois_<atlas>/`` folder or in a ``rois_<atlas>.tar.xz`` archive, plus the phenotype
sheet ``Phenotypic_V1_0b_preprocessed1.csv`` (joined on ``FILE_ID``; missing values are ``-9999``
or empty). :func:`import_pcp` turns them into the ROI time-series derivatives of
``docs/contracts.md``:

    OUT/dataset_description.json
    OUT/participants.tsv (+ .json)
    OUT/sub-<SUB_ID:07d>/func/
        sub-<SUB_ID>_task-rest_space-MNI152NLin6Asym_atlas-CC200_stat-mean_timeseries.tsv (+ .json)

The archive is streamed (never unpacked to disk). Everything is written into a hidden temporary
folder next to ``OUT`` that is renamed to ``OUT`` at the end, with ``dataset_description.json``
written last, so an interrupted import never looks complete.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from brainfm import __version__
from brainfm.errors import InputError, ProcessingError, UsageError
from brainfm.fileio import check_output_folder
from brainfm.importers.phenotype import check_pcp_phenotype

LOGGER = logging.getLogger(__name__)

#: Repetition time (s) of each ABIDE I site, from the ABIDE acquisition tables.
SITE_REPETITION_TIME: dict[str, float] = {
    "CALTECH": 2.0,
    "CMU": 2.0,
    "KKI": 2.5,
    "LEUVEN_1": 1.656,
    "LEUVEN_2": 1.656,
    "MAX_MUN": 3.0,
    "NYU": 2.0,
    "OHSU": 2.5,
    "OLIN": 1.5,
    "PITT": 1.5,
    "SBL": 2.2,
    "SDSU": 2.0,
    "STANFORD": 2.0,
    "TRINITY": 2.0,
    "UCLA_1": 3.0,
    "UCLA_2": 3.0,
    "UM_1": 2.0,
    "UM_2": 2.0,
    "USM": 2.0,
    "YALE": 2.0,
}

#: PCP atlas name -> (BIDS atlas label, bundled ROI table in brainfm/data/atlases).
PCP_ATLASES: dict[str, tuple[str, str]] = {
    "cc200": ("CC200", "tpl-MNI152NLin6Asym_res-03_atlas-CC200_dseg.tsv"),
}

SPACE = "MNI152NLin6Asym"
TASK = "rest"
#: PCP's four C-PAC denoising pipelines (the ``<pipeline>`` folder of the PCP release), as the
#: files cannot tell them apart: the user names the one downloaded (``--pipeline``).
PIPELINES: dict[str, str] = {
    "filt_global": "nuisance regression, global signal regression, 0.01-0.1 Hz band-pass",
    "filt_noglobal": "nuisance regression, 0.01-0.1 Hz band-pass, no global signal regression",
    "nofilt_global": "nuisance regression, global signal regression, no band-pass",
    "nofilt_noglobal": "nuisance regression only: no band-pass, no global signal regression",
}
DEFAULT_PIPELINE = "filt_global"
#: The ``DenoisingStrategy`` of the default pipeline (what the ``pcp`` strategy emulates).
DENOISING_STRATEGY = f"pcp-cpac-{DEFAULT_PIPELINE}"
PHENOTYPE_NAME = "Phenotypic_V1_0b_preprocessed1.csv"

_PARTICIPANTS_JSON = {
    "participant_id": {"Description": "sub- followed by the ABIDE SUB_ID, zero-padded to 7 digits"},
    "age": {"Description": "Age at scan (AGE_AT_SCAN)", "Units": "year"},
    "sex": {"Description": "Sex (SEX)", "Levels": {"M": "male", "F": "female"}},
    "site": {"Description": "ABIDE acquisition site (SITE_ID)"},
    "diagnosis": {
        "Description": "Diagnostic group (DX_GROUP)",
        "Levels": {"autism": "autism spectrum disorder", "control": "typical control"},
    },
    "fiq": {"Description": "Full-scale IQ (FIQ); test battery varies by site (FIQ_TEST_TYPE)"},
    "viq": {"Description": "Verbal IQ (VIQ); test battery varies by site (VIQ_TEST_TYPE)"},
    "piq": {
        "Description": "Performance IQ (PIQ), the closest ABIDE proxy for fluid intelligence; "
        "test battery varies by site (PIQ_TEST_TYPE)"
    },
    "mean_fd": {"Description": "Mean framewise displacement (func_mean_fd)", "Units": "mm"},
}


@dataclass
class ImportSummary:
    """What :func:`import_pcp` did.

    Attributes
    ----------
    out_dir : Path
        The derivatives folder written.
    n_subjects : int
        Subjects written.
    skipped : list of str
        FILE_IDs of time-series files without a phenotype row (not imported).
    masked_rois : int
        Total number of all-zero ROI columns written as ``n/a``.
    seconds : float
        Wall time.
    sites : dict of str to int
        Subjects per site.
    """

    out_dir: Path
    n_subjects: int
    skipped: list[str] = field(default_factory=list)
    masked_rois: int = 0
    seconds: float = 0.0
    sites: dict[str, int] = field(default_factory=dict)


def parse_tr_overrides(items: list[str] | None) -> dict[str, float]:
    """Parse ``SITE=TR`` strings.

    Parameters
    ----------
    items : list of str or None
        E.g. ``["OLIN=1.5", "SBL=2.2"]``.

    Returns
    -------
    dict of str to float
        Upper-case site name to repetition time in seconds.

    Raises
    ------
    UsageError
        Malformed item or non-positive TR.
    """
    out: dict[str, float] = {}
    for item in items or []:
        site, sep, value = str(item).partition("=")
        try:
            tr = float(value)
        except ValueError:
            tr = float("nan")
        if not sep or not site.strip() or not np.isfinite(tr) or tr <= 0:
            raise UsageError(f"bad --tr-override '{item}': use SITE=SECONDS, e.g. OLIN=1.5")
        out[site.strip().upper()] = tr
    return out


def atlas_roi_names(atlas: str) -> tuple[str, dict[int, str]]:
    """ROI names of a PCP atlas from the bundled atlas table.

    Parameters
    ----------
    atlas : str
        PCP atlas name (``cc200``; case-insensitive).

    Returns
    -------
    label : str
        The BIDS ``atlas-`` label (``CC200``).
    names : dict of int to str
        Label index to ROI name, in table order.

    Raises
    ------
    UsageError
        The atlas has no bundled table.
    """
    key = atlas.lower()
    if key not in PCP_ATLASES:
        raise UsageError(
            f"--atlas {atlas}: no bundled ROI table; supported: {', '.join(sorted(PCP_ATLASES))}"
        )
    label, table = PCP_ATLASES[key]
    ref = resources.files("brainfm.data").joinpath("atlases", table)
    with ref.open("r") as handle:
        frame = pd.read_csv(handle, sep="\t")
    return label, {int(i): str(n) for i, n in zip(frame["index"], frame["name"], strict=True)}


def read_phenotype(path: Path) -> pd.DataFrame:
    """Read the PCP phenotype CSV.

    Parameters
    ----------
    path : Path
        ``Phenotypic_V1_0b_preprocessed1.csv`` (or the full PCP sheet).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``FILE_ID``; ``-9999`` and empty cells are NaN
        (see :func:`~brainfm.importers.phenotype.check_pcp_phenotype`).

    Raises
    ------
    InputError
        Missing file, missing required columns, or a value that cannot be read (naming the
        line).
    """
    if not path.is_file():
        raise InputError(f"phenotype file not found: {path} (pass --phenotype)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read phenotype file {path}: {exc}") from exc
    need = {"SUB_ID", "SITE_ID", "FILE_ID", "AGE_AT_SCAN", "SEX", "DX_GROUP"}
    missing = sorted(need - set(frame.columns))
    if missing:
        raise InputError(f"{path} lacks the PCP columns {', '.join(missing)}")
    return check_pcp_phenotype(frame, path)


def _fmt(value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.6g}"


def _locate_source(src: Path, atlas: str) -> tuple[str, Path]:
    """Return ("dir", folder) or ("tar", archive) for the PCP time series."""
    atlas = atlas.lower()
    if src.is_file():
        if ".tar" in src.name or src.suffix in {".tgz", ".txz"}:
            return "tar", src
        raise InputError(f"{src} is not a rois_{atlas} folder or .tar archive")
    if not src.is_dir():
        raise InputError(f"PCP source not found: {src}")
    if (src / f"rois_{atlas}").is_dir():
        return "dir", src / f"rois_{atlas}"
    archives = sorted(src.glob(f"rois_{atlas}.tar*"))
    if archives:
        return "tar", archives[0]
    if any(src.glob(f"*_rois_{atlas}.1D")):
        return "dir", src
    raise InputError(
        f"no rois_{atlas}/ folder, rois_{atlas}.tar.xz archive or *_rois_{atlas}.1D files in {src}"
    )


def _default_phenotype(src: Path) -> Path:
    base = src if src.is_dir() else src.parent
    for folder in (base, base.parent):
        if (folder / PHENOTYPE_NAME).is_file():
            return folder / PHENOTYPE_NAME
        found = sorted(folder.glob("Phenotypic*.csv"))
        if found:
            return found[0]
    raise InputError(f"no {PHENOTYPE_NAME} next to {src}; pass --phenotype")


def _iter_1d(kind: str, where: Path, atlas: str) -> Iterator[tuple[str, str, bytes]]:
    """Yield (FILE_ID, source name, file bytes) for every ``*_rois_<atlas>.1D``."""
    suffix = f"_rois_{atlas.lower()}.1D"
    if kind == "dir":
        for path in sorted(where.glob(f"*{suffix}")):
            yield path.name[: -len(suffix)], f"{where.name}/{path.name}", path.read_bytes()
        return
    try:
        with tarfile.open(where, mode="r|*") as archive:
            for member in archive:
                name = member.name
                base = name.rsplit("/", 1)[-1]
                if not member.isfile() or not base.endswith(suffix):
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                yield base[: -len(suffix)], f"{where.name}:{name}", handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"cannot read archive {where}: {exc}") from exc


def _convert_1d(
    raw: bytes, source: str, roi_names: Mapping[int, str]
) -> tuple[str, int, list[str]]:
    """Convert one .1D file to the brainfm TSV text.

    Returns the TSV text, the number of volumes and the names of all-zero (masked) ROIs.
    """
    text = raw.decode("ascii", errors="strict") if raw.isascii() else raw.decode("utf-8")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n").split("\n")
    header = lines[0].strip().split("\t") if lines else []
    if not header or not all(re.fullmatch(r"#\d+", h.strip()) for h in header):
        raise InputError(f"{source}: first line must be the '#1 ... #N' header")
    labels = [int(h.strip()[1:]) for h in header]
    body = [line.rstrip() for line in lines[1:] if line.strip()]
    if len(body) < 2:
        raise InputError(f"{source}: fewer than 2 time points")
    try:
        data = np.loadtxt(io.StringIO("\n".join(body)), delimiter="\t", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise InputError(f"{source}: not a numeric table ({exc})") from exc
    if data.shape[1] != len(labels):
        raise InputError(f"{source}: {data.shape[1]} columns but {len(labels)} header labels")
    unknown = sorted(set(labels) - set(roi_names))
    if unknown:
        raise InputError(f"{source}: labels {unknown[:5]} are not in the atlas table")
    zero = ~np.isfinite(data).all(axis=0) | np.all(data == 0, axis=0)
    col_of = {lab: j for j, lab in enumerate(labels)}
    order = [col_of.get(idx, -1) for idx in roi_names]
    masked = [roi_names[lab] for lab, z in zip(labels, zero, strict=True) if z]
    masked += [roi_names[idx] for idx, j in zip(roi_names, order, strict=True) if j < 0]
    head = "\t".join(roi_names.values())
    if order == list(range(len(labels))) and not zero.any():
        # Fast path: the original tokens, untouched, under the new header.
        out_body = [line.replace(" ", "") for line in body]
    else:
        drop = {j for j, z in enumerate(zero) if z}
        out_body = []
        for line in body:
            tok = line.split("\t")
            out_body.append(
                "\t".join("n/a" if j < 0 or j in drop else tok[j].strip() for j in order)
            )
    return head + "\n" + "\n".join(out_body) + "\n", int(data.shape[0]), masked


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _write_json(path: Path, obj: object) -> None:
    _write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def import_pcp(
    src: Path | str,
    out: Path | str,
    atlas: str = "cc200",
    tr_override: Mapping[str, float] | None = None,
    phenotype: Path | str | None = None,
    overwrite: bool = False,
    pipeline: str = DEFAULT_PIPELINE,
) -> ImportSummary:
    """Convert PCP ROI time series + phenotype into brainfm ROI time-series derivatives.

    Parameters
    ----------
    src : path
        A folder holding ``rois_<atlas>/`` or ``rois_<atlas>.tar.xz`` (and usually the phenotype
        CSV), the ``rois_<atlas>`` folder itself, or the archive itself.
    out : path
        Output derivatives folder; must not exist or be empty (unless ``overwrite``).
    atlas : str, optional
        PCP atlas name (default ``cc200``).
    tr_override : mapping of str to float, optional
        Repetition time (s) per site, overriding or extending :data:`SITE_REPETITION_TIME`.
    phenotype : path, optional
        Phenotype CSV; default ``Phenotypic_V1_0b_preprocessed1.csv`` next to ``src``.
    overwrite : bool, optional
        Replace an existing non-empty ``out``.
    pipeline : str, optional
        The PCP pipeline the series come from (:data:`PIPELINES`; default ``filt_global``),
        recorded as each sidecar's ``DenoisingStrategy`` (``pcp-cpac-<pipeline>``) and in
        ``dataset_description.json``.

    Returns
    -------
    ImportSummary
        Counts and timing.

    Raises
    ------
    InputError
        Missing or malformed source files, or no subject matched the phenotype sheet.
    UsageError
        ``out`` is a file, not writable, inside the source or not empty; the atlas is
        unsupported, or a site has no known repetition time.
    ProcessingError
        Writing failed (disk full); nothing was published.
    """
    start = time.perf_counter()
    if pipeline not in PIPELINES:
        raise UsageError(f"--pipeline {pipeline}: not a PCP pipeline; choose one of "
                         f"{', '.join(PIPELINES)} (the folder name of the PCP download)")
    src, out = Path(src), Path(out)
    label, roi_names = atlas_roi_names(atlas)
    kind, where = _locate_source(src, atlas)
    pheno_path = Path(phenotype) if phenotype is not None else _default_phenotype(src)
    pheno = read_phenotype(pheno_path)
    overrides = {k.upper(): float(v) for k, v in (tr_override or {}).items()}
    trs = {**SITE_REPETITION_TIME, **overrides}
    sites = {str(s).upper() for s in pheno["SITE_ID"].dropna()}
    unknown = sorted(sites - set(trs))
    if unknown:
        raise UsageError(
            f"no repetition time known for site(s) {', '.join(unknown)}; "
            "pass --tr-override SITE=SECONDS"
        )
    check_output_folder(out, "output folder")
    for source in (Path(src), where):
        if source.is_dir() and source.resolve() in (out.resolve(), *out.resolve().parents):
            raise UsageError(f"output folder {out} is inside the source {source}; brainfm "
                             "never writes into its inputs: choose another folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"output folder {out} exists and is not empty (use --overwrite)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset is not
    except OSError as exc:
        raise ProcessingError(f"cannot write beside {out}: {exc}") from exc
    summary = ImportSummary(out_dir=out, n_subjects=0)
    rows: list[dict[str, object]] = []
    try:
        for file_id, source, raw in _iter_1d(kind, where, atlas):
            if file_id not in pheno.index:
                summary.skipped.append(file_id)
                LOGGER.warning("%s: FILE_ID %s not in %s; skipped", source, file_id,
                               pheno_path.name)
                continue
            row = pheno.loc[file_id]
            site = str(row["SITE_ID"]).upper()
            tr = trs[site]
            sub = f"{int(row['SUB_ID']):07d}"
            text, n_vol, masked = _convert_1d(raw, source, roi_names)
            stem = f"sub-{sub}_task-{TASK}_space-{SPACE}_atlas-{label}_stat-mean_timeseries"
            func = tmp / f"sub-{sub}" / "func"
            if (func / f"{stem}.tsv").exists():
                raise InputError(f"{source}: SUB_ID {sub} appears twice in the source")
            _write_text(func / f"{stem}.tsv", text)
            _write_json(
                func / f"{stem}.json",
                {
                    "RepetitionTime": tr,
                    "SamplingFrequency": round(1.0 / tr, 6),
                    "Sources": [source],
                    "DenoisingStrategy": f"pcp-cpac-{pipeline}",
                    "NumberOfVolumesRetained": n_vol,
                    "Atlas": label,
                    "Site": site,
                    "RepetitionTimeSource": "--tr-override" if site in overrides
                    else "ABIDE site table",
                    "MaskedROIs": masked,
                },
            )
            summary.masked_rois += len(masked)
            summary.sites[site] = summary.sites.get(site, 0) + 1
            sex = float(row["SEX"])
            dx = float(row["DX_GROUP"])
            rows.append(
                {
                    "participant_id": f"sub-{sub}",
                    "age": _fmt(row["AGE_AT_SCAN"]),
                    "sex": {1.0: "M", 2.0: "F"}.get(sex, "n/a"),
                    "site": site,
                    "diagnosis": {1.0: "autism", 2.0: "control"}.get(dx, "n/a"),
                    "fiq": _fmt(row["FIQ"]),
                    "viq": _fmt(row["VIQ"]),
                    "piq": _fmt(row["PIQ"]),
                    "mean_fd": _fmt(row["func_mean_fd"]),
                }
            )
            summary.n_subjects += 1
            if summary.n_subjects % 100 == 0:
                LOGGER.info("imported %d subjects", summary.n_subjects)
        if not rows:
            raise InputError(
                f"no *_rois_{atlas}.1D file in {where} matched a FILE_ID of {pheno_path}"
            )
        table = pd.DataFrame(rows).sort_values("participant_id")
        table.to_csv(tmp / "participants.tsv", sep="\t", index=False, lineterminator="\n")
        _write_json(tmp / "participants.json", _PARTICIPANTS_JSON)
        _write_text(tmp / ".bidsignore", "*_timeseries.tsv\n*_timeseries.json\n")
        _write_text(tmp / "README", _readme(label, where, pheno_path))
        _write_json(tmp / "dataset_description.json",
                    _description(label, where, pheno_path, pipeline))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):  # disk full, permissions changed under us
            raise ProcessingError(f"cannot write {exc.filename or out}: {exc.strerror or exc}; "
                                  f"nothing was published to {out}") from exc
        raise
    summary.seconds = time.perf_counter() - start
    return summary


def _description(label: str, where: Path, pheno: Path, pipeline: str) -> dict:
    return {
        "Name": f"ABIDE I (PCP C-PAC {pipeline}) {label} ROI time series",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "brainfm-import",
                "Version": __version__,
                "Description": f"brainfm-import pcp from {where.name} and {pheno.name}",
            },
            {
                "Name": "C-PAC",
                "Description": "Preprocessed Connectomes Project (PCP) ABIDE I preprocessing, "
                f"{pipeline} strategy ({PIPELINES[pipeline]})",
                "CodeURL": "http://preprocessed-connectomes-project.org/abide/",
            },
        ],
        "SourceDatasets": [
            {"URL": "http://preprocessed-connectomes-project.org/abide/"},
            {"URL": "http://fcon_1000.projects.nitrc.org/indi/abide/"},
        ],
        "License": "CC BY-NC-SA 3.0 (ABIDE / FCP-INDI terms, non-commercial)",
        "HowToAcknowledge": "Cite Di Martino et al. 2014, Mol Psychiatry 19:659 (ABIDE) and "
        "Craddock et al. 2013, Front Neuroinform (The Neuro Bureau Preprocessing Initiative).",
    }


def _readme(label: str, where: Path, pheno: Path) -> str:
    return (
        f"ABIDE I ROI time series ({label}) imported by brainfm-import {__version__} from "
        f"{where.name} and {pheno.name}.\n\n"
        "Repetition times come from the ABIDE site table (see the JSON sidecars); all-zero ROI "
        "columns (outside the field of view) are written as n/a.\n"
        "Data: CC BY-NC-SA 3.0, non-commercial research use only; anything trained on them "
        "inherits these terms.\n"
    )
