"""The BIDS derivatives dataset brainfm writes: file names and its shared files.

Names follow the installed BIDS schema's entity order (:func:`build_name`); the shared files
(``dataset_description.json``, ``.bidsignore``) are written under the output lock of
:mod:`brainfm.fileio`, which does every write, atomically.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brainfm import __version__
from brainfm.errors import UsageError
from brainfm.fileio import output_lock, write_json_atomic, write_text_atomic

#: BIDS 1.11.2's entity order, used when the installed schema cannot be read
#: (:func:`entity_order` reads it from bidsschematools).
_FALLBACK_ENTITY_ORDER = (
    "sub", "tpl", "ses", "cohort", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc",
    "stain", "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi",
    "space", "split", "recording", "chunk", "atlas", "seg", "scale", "res", "den", "label",
    "desc")

_ENTITY_RE = re.compile(r"(?:^|_)([a-zA-Z]+)-([a-zA-Z0-9]+)")

#: pybids configuration for the ``stat`` entity of brainfm's (and XCP-D's) outputs; pybids'
#: own ``derivatives`` configuration covers ``atlas``, ``space``, ``desc``, ``res``, ``den``.
#: ``BIDSLayout(out, config=["bids", "derivatives", PYBIDS_CONFIG], validate=False)``.
PYBIDS_CONFIG = Path(__file__).parent / "data" / "pybids_config.json"


@functools.lru_cache(maxsize=1)
def _bids_schema() -> Any:
    """The BIDS schema installed with pybids (bidsschematools), loaded once; None if unusable."""
    try:
        from bidsschematools.schema import load_schema

        return load_schema()
    except Exception:  # noqa: BLE001 - an older or broken schema package: callers fall back
        return None


@functools.lru_cache(maxsize=1)
def entity_order() -> tuple[str, ...]:
    """Entity keys in the order file names carry them: the installed BIDS schema's order.

    ``stat`` (XCP-D's statistic entity, not in the schema yet) goes just before ``desc``.
    """
    schema = _bids_schema()
    try:
        order = [str(schema["objects"]["entities"][e]["name"])
                 for e in schema["rules"]["entities"]]
    except (TypeError, KeyError):  # no schema, or one laid out differently: the last known
        order = list(_FALLBACK_ENTITY_ORDER)
    order.insert(order.index("desc") if "desc" in order else len(order), "stat")
    return tuple(order)


#: What the BIDS validator must skip: the suffixes brainfm writes that BIDS 1.11 does not define
#: (most of them XCP-D's), the reports and the run records. Nothing standard is hidden, so the
#: validator checks every file the schema defines; ``logs/`` and ``sourcedata/`` (the atlas
#: dataset, valid on its own) are folders the schema already leaves unchecked. ``_motion``
#: is a BIDS suffix, but of the ``motion`` datatype (with ``tracksys``), not XCP-D's table.
BIDSIGNORE_PATTERNS = (
    "*.html",
    "/group_*",
    "/sub-*/log",
    "*_desc-runs_qc.tsv",
    "*_desc-runs_qc.json",
    "*_stat-coverage_bold.tsv",
    "*_stat-coverage_bold.json",
    "*_timeseries.tsv",
    "*_timeseries.json",
    "*_relmat.tsv",
    "*_relmat.json",
    "*_motion.tsv",
    "*_motion.json",
    "*_outliers.tsv",
    "*_outliers.json",
    "*_design.tsv",
    "*_design.json",
    "*_predictions.tsv",
    "*_predictions.json",
    "*_expertweights.tsv",
    "*_expertweights.json",
)


def parse_entities(filename: str) -> dict[str, str]:
    """Parse the BIDS ``key-value`` entities of a file name.

    Parameters
    ----------
    filename : str
        A file name (directories are ignored), e.g.
        ``sub-01_ses-1_task-rest_run-2_atlas-CC200_stat-mean_timeseries.tsv``.

    Returns
    -------
    dict of str to str
        Entities in order of appearance, e.g. ``{"sub": "01", "ses": "1", "task": "rest", ...}``.
    """
    stem = Path(filename).name.split(".", 1)[0]
    return {key: value for key, value in _ENTITY_RE.findall(stem)}


def strip_prefix(label: str, prefix: str) -> str:
    """A BIDS label without its entity prefix (``strip_prefix("sub-01", "sub-")`` is ``"01"``)."""
    label = str(label).strip()
    return label[len(prefix):] if label.startswith(prefix) else label


def index_ignore(participants: Sequence[str] | None = None,
                 datatypes: Sequence[str] = ()) -> list[Any]:
    """pybids ``ignore`` patterns that index only what a run needs.

    Indexing a whole fMRIPrep dataset costs seconds per hundred participants (anatomical
    transforms, figures, logs); a participant job (e.g. one SLURM array task) needs only its own
    participant's folders of the given datatypes.

    Parameters
    ----------
    participants : sequence of str, optional
        Labels (without ``sub-``) to index; all when empty.
    datatypes : sequence of str, optional
        Datatype folders to skip (``anat``, ``figures``, ``log`` ...).

    Returns
    -------
    list
        For ``BIDSLayoutIndexer(ignore=...)``: pybids' default list plus these.
    """
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    ignore: list[Any] = list(DEFAULT_LOCATIONS_TO_IGNORE)  # kept: passing ignore replaces it
    if datatypes:
        folders = "|".join(re.escape(d) for d in datatypes)
        ignore.append(re.compile(rf"^/sub-[^/]+/(?:ses-[^/]+/)?(?:{folders})(?:/|$)"))
    if participants:
        labels = "|".join(re.escape(strip_prefix(p, "sub-")) for p in participants)
        ignore.append(re.compile(rf"^/sub-(?!(?:{labels})(?:/|$))"))
    return ignore


def software_filters(high_pass: float | None, low_pass: float | None) -> dict[str, Any]:
    """The BIDS ``SoftwareFilters`` field of a band-pass, as XCP-D writes it.

    nilearn's ``signal.clean`` applies a zero-phase Butterworth filter of order 5; an absent
    cutoff (``None`` or 0) is left out, and with neither there is no filter (``{}``).
    """
    cutoffs = {name: float(value) for name, value in (("High-pass cutoff (Hz)", high_pass),
                                                     ("Low-pass cutoff (Hz)", low_pass))
               if value}
    if not cutoffs:
        return {}
    kind = ("Bandpass filter" if len(cutoffs) == 2
            else "High-pass filter" if high_pass else "Low-pass filter")
    return {kind: {**cutoffs, "Filter order": 5, "Filter type": "Butterworth, zero phase"}}


def bandpass_cutoffs(sidecar: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """``(high_pass, low_pass)`` in Hz from a sidecar's ``SoftwareFilters`` (None when absent)."""
    filters = sidecar.get("SoftwareFilters")
    if not isinstance(filters, Mapping):
        return None, None
    found: dict[str, float] = {}
    for spec in filters.values():
        if isinstance(spec, Mapping):
            for key in ("High-pass cutoff (Hz)", "Low-pass cutoff (Hz)"):
                if key in spec:
                    found[key] = spec[key]
    return found.get("High-pass cutoff (Hz)"), found.get("Low-pass cutoff (Hz)")


def reliability_columns(target: str) -> list[str]:
    """A target's per-row reliability columns in predictions tables: ``<target>_reliable``
    (from the card's reliable range) and ``<target>_expected_mae`` (the held-out MAE of the
    band the prediction falls in)."""
    return [f"{target}_reliable", f"{target}_expected_mae"]


def build_name(entities: Mapping[str, Any], suffix: str, extension: str) -> str:
    """Compose a BIDS file name from entities in the schema's order (:func:`entity_order`).

    Parameters
    ----------
    entities : mapping
        Entity key to value (``{"sub": "01", "task": "rest", "atlas": "CC200"}``); ``None``
        values are skipped. Unknown keys raise ``KeyError``.
    suffix : str
        The BIDS suffix (``timeseries``, ``relmat``, ``bold`` ...).
    extension : str
        The extension with its dot (``.tsv``, ``.json``).

    Returns
    -------
    str
        The file name, e.g. ``sub-01_task-rest_atlas-CC200_stat-mean_timeseries.tsv``.
    """
    order = entity_order()
    unknown = set(entities) - set(order)
    if unknown:
        raise KeyError(f"unknown BIDS entities {sorted(unknown)}")
    parts = [f"{key}-{entities[key]}" for key in order
             if entities.get(key) not in (None, "")]
    return "_".join([*parts, suffix]) + extension


#: Where the atlases used are copied: a BIDS atlas dataset nested in the outputs, in the place
#: XCP-D 26 gives it (``dataset_description.json``, ``atlas-<label>_description.json``,
#: ``tpl-<space>/anat/tpl-<space>_atlas-<label>[_res-<res>]_dseg.{nii.gz,tsv,json}``).
ATLAS_DATASET = Path("sourcedata") / "atlases"


def atlas_image_path(output_dir: str | Path, label: str, space: str,
                     res: str | None = None) -> Path:
    """Path of an atlas image in the outputs' atlas dataset (:data:`ATLAS_DATASET`)."""
    name = build_name({"tpl": space, "atlas": label, "res": res}, "dseg", ".nii.gz")
    return Path(output_dir) / ATLAS_DATASET / f"tpl-{space}" / "anat" / name


def find_atlas_images(output_dir: str | Path, label: str, space: str | None = None
                      ) -> list[Path]:
    """The images of atlas ``label`` (in ``space``, else any) in the outputs' atlas dataset."""
    tpl = f"tpl-{space}" if space else "tpl-*"
    return sorted((Path(output_dir) / ATLAS_DATASET).glob(
        f"{tpl}/anat/{tpl}_atlas-{label}_*dseg.nii.gz"))


def subject_func_dir(output_dir: Path, subject: str, session: str | None) -> Path:
    """Return ``output_dir/sub-<subject>[/ses-<session>]/func``."""
    path = Path(output_dir) / f"sub-{subject}"
    if session:
        path = path / f"ses-{session}"
    return path / "func"


def participant_report_path(output_dir: str | Path, subject: str) -> Path:
    """``output_dir/sub-<label>.html``: the participant's report, and the mark of its completeness.

    The report is written last, after every other file of the participant; the participant's
    writer removes it before writing anything. So a participant folder without its report was
    interrupted or failed part-way (its files may be stale or missing), and the group level
    leaves it out, naming it.
    """
    return Path(output_dir) / f"sub-{subject.removeprefix('sub-')}.html"


def incomplete_participants(output_dir: str | Path) -> list[str]:
    """Participants of an output dataset whose outputs are not complete (no report yet).

    Returns
    -------
    list of str
        ``sub-<label>`` folders without ``sub-<label>.html`` beside them, sorted.
    """
    root = Path(output_dir)
    return sorted(p.name for p in root.glob("sub-*") if p.is_dir()
                  and not participant_report_path(root, p.name).is_file())


def bids_version() -> str:
    """The BIDS version of the schema installed with pybids (the entities brainfm names by)."""
    schema = _bids_schema()
    return str(schema["bids_version"]) if schema else "1.11.2"


def dataset_description(sources: Mapping[str, str | Path],
                        container: Mapping[str, str] | None = None,
                        license_text: str | None = None) -> dict[str, Any]:
    """Build brainfm's ``dataset_description.json`` content.

    Parameters
    ----------
    sources : mapping
        Dataset name (as in the sidecars' ``bids:<name>:`` URIs: ``raw``, ``preprocessed``) to
        its folder; they become ``DatasetLinks`` and (each folder once) ``SourceDatasets``.
    container : mapping, optional
        ``{"Type": "docker", "Tag": "..."}`` when running in a container.
    license_text : str, optional
        ``License`` of the outputs (the model's terms, when predictions are written).
    """
    generated_by: dict[str, Any] = {"Name": "brainfm", "Version": __version__}
    if container:
        generated_by["Container"] = dict(container)
    links = {name: Path(path).absolute().as_uri() for name, path in sources.items()}
    desc: dict[str, Any] = {
        "Name": "brainfm outputs",
        "BIDSVersion": bids_version(),
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "DatasetLinks": links,
        "SourceDatasets": [{"URL": uri} for uri in dict.fromkeys(links.values())],
        "HowToAcknowledge": "Cite brainfm and the atlases described in "
                            f"{ATLAS_DATASET.as_posix()}/.",
    }
    if license_text:
        desc["License"] = license_text
    return desc


def container_info() -> dict[str, str] | None:
    """Describe brainfm's container when running in one (Apptainer/Singularity or Docker).

    Docker is recognised by ``BRAINFM_IMAGE_TAG``, which brainfm's image sets: a ``/.dockerenv``
    only says that *some* container runs, not that it is brainfm's image (a venv inside a
    development container is not).
    """
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        image = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER", "")
        return {"Type": "apptainer", "URI": image}
    if os.environ.get("BRAINFM_IMAGE_TAG"):
        return {"Type": "docker", "Tag": os.environ["BRAINFM_IMAGE_TAG"]}
    return None


def init_output_dataset(output_dir: Path, sources: Mapping[str, str | Path],
                        license_text: str | None = None) -> None:
    """Create or update the shared files of the output dataset, safely under the lock.

    An existing ``dataset_description.json`` from the same brainfm version is kept, with the
    dataset links and licence of this run added; one from another version is replaced (and the
    previous ``GeneratedBy`` kept as history, like fMRIPrep does).

    Parameters
    ----------
    output_dir : Path
        The output dataset.
    sources : mapping
        Dataset name to folder (see :func:`dataset_description`).
    license_text : str, optional
        ``License`` of the outputs.
    """
    output_dir = Path(output_dir)
    with output_lock(output_dir):
        desc_path = output_dir / "dataset_description.json"
        desc = dataset_description(sources, container_info(), license_text)
        if desc_path.exists():
            try:
                previous = json.loads(desc_path.read_text())
            except (json.JSONDecodeError, OSError, UnicodeDecodeError) as err:
                raise UsageError(
                    f"{desc_path} exists but is not readable JSON ({err}); the output folder "
                    "is not a BIDS derivatives dataset brainfm can add to: fix or remove the "
                    "file, or choose another output folder") from err
            if not isinstance(previous, dict):
                raise UsageError(
                    f"{desc_path} holds a JSON {type(previous).__name__}, not an object; the "
                    "output folder is not a BIDS derivatives dataset brainfm can add to: fix or "
                    "remove the file, or choose another output folder")
            prev_gen = [g for g in previous.get("GeneratedBy", []) if isinstance(g, dict)]
            if prev_gen and prev_gen[0].get("Version") == __version__:
                links = {**(previous.get("DatasetLinks") or {}), **desc["DatasetLinks"]}
                urls = [s.get("URL") for s in previous.get("SourceDatasets", [])
                        if isinstance(s, dict)]
                desc = {**previous, "DatasetLinks": links, "SourceDatasets": [
                    {"URL": u} for u in dict.fromkeys([*urls, *links.values()]) if u]}
                if license_text:
                    desc["License"] = license_text
            else:
                desc["GeneratedBy"].extend(g for g in prev_gen if g not in desc["GeneratedBy"])
        write_json_atomic(desc_path, desc)
        ignore_path = output_dir / ".bidsignore"
        existing = ignore_path.read_text().splitlines() if ignore_path.exists() else []
        lines = existing + [p for p in BIDSIGNORE_PATTERNS if p not in existing]
        if lines != existing:
            write_text_atomic(ignore_path, "\n".join(lines) + "\n")
