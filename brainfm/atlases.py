"""Parcellation atlases: the bundled ones, TemplateFlow copies of them, and user atlases.

Every atlas is a 3-D integer label image in a standard space plus a BIDS ``dseg.tsv``-style
table (``index``, ``name`` and, for Schaefer 2018, ``network``). The bundled atlases live in
``brainfm/data/atlases`` under TemplateFlow-style names, with their terms of use beside them
(``LICENSE-*.txt``, ``README.md``):

- ``CC200`` -> ``atlas-CC200``: 200 ROIs, MNI152NLin6Asym 3 mm, the exact image PCP used for
  ABIDE (Craddock et al. 2012).
- ``Schaefer2018-200`` / ``-400`` / ``-1000`` (aliases ``Schaefer200`` ...) ->
  ``atlas-Schaefer200`` / ``Schaefer400`` / ``Schaefer1000``: 7-network order, MNI152NLin6Asym
  2 mm (CBIG, MIT; volumes from neuroparc, Apache-2.0).

Nothing is ever downloaded. A Schaefer image is taken from TemplateFlow only when the user's
``TEMPLATEFLOW_HOME`` already holds a non-empty copy of it (TemplateFlow's offline skeleton
contains 0-byte placeholders, which are ignored); otherwise the bundled copy is used. The
TemplateFlow home is worked out exactly as ``templateflow.conf`` does, without importing
``templateflow``: importing it populates an empty ``TEMPLATEFLOW_HOME`` with a skeleton (and,
with DataLad enabled, may reach the network).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainfm.errors import InputError, UsageError

LOGGER = logging.getLogger(__name__)

#: Folder of the bundled atlas images, tables and licences.
ATLAS_DIR = Path(__file__).resolve().parent / "data" / "atlases"

#: Standard space of every bundled atlas (FSL's MNI152 6th generation, as used by PCP/ABIDE).
SPACE = "MNI152NLin6Asym"

_SCHAEFER_CITATION = (
    "Schaefer A, Kong R, Gordon EM, Laumann TO, Zuo XN, Holmes AJ, Eickhoff SB, Yeo BTT. "
    "Local-Global Parcellation of the Human Cerebral Cortex from Intrinsic Functional "
    "Connectivity MRI. Cerebral Cortex 28(9):3095-3114 (2018). doi:10.1093/cercor/bhx179. "
    "Volumes on the 2 mm MNI152NLin6Asym grid from neuroparc: Lawrence RM et al. "
    "Standardizing human brain parcellations. Scientific Data 8:78 (2021). "
    "doi:10.1038/s41597-021-00849-3."
)
_CC200_CITATION = (
    "Craddock RC, James GA, Holtzheimer PE, Hu XP, Mayberg HS. A whole brain fMRI atlas "
    "generated via spatially constrained spectral clustering. Human Brain Mapping "
    "33(8):1914-1928 (2012). doi:10.1002/hbm.21333. The 3 mm image used by the Preprocessed "
    "Connectomes Project for ABIDE (Craddock C et al. 2013, Frontiers in Neuroinformatics, "
    "'The Neuro Bureau Preprocessing Initiative')."
)


@dataclass(frozen=True)
class Atlas:
    """A parcellation atlas ready for ROI signal extraction.

    Attributes
    ----------
    name : str
        Name used on the command line (``CC200``, ``Schaefer2018-400``, or a user name).
    label : str
        Value of the BIDS ``atlas-`` entity in derivative names (alphanumeric).
    space : str
        Standard space of the image (``MNI152NLin6Asym`` for the bundled atlases).
    image : pathlib.Path
        3-D integer label image (0 = background).
    labels : pandas.DataFrame
        One row per ROI in output column order: ``index`` (label value, int), ``name`` (str)
        and, where known, ``network`` (Schaefer 2018: the Yeo 7-network name).
    source : str
        ``'templateflow'``, ``'bundled'`` or ``'user'``.
    licence_file : pathlib.Path or None
        Terms of use of the image (``None`` for user atlases).
    citation : str
        Reference(s) to cite when the atlas is used.
    transform : pathlib.Path or None
        The TemplateFlow transform the image was warped with into ``space``
        (:mod:`brainfm.atlas_spaces`); ``None`` for an image drawn in ``space``.
    """

    name: str
    label: str
    space: str
    image: Path
    labels: pd.DataFrame = field(compare=False, repr=False)
    source: str
    licence_file: Path | None
    citation: str
    transform: Path | None = None


@dataclass(frozen=True)
class _AtlasSpec:
    """Static description of a built-in atlas."""

    name: str
    label: str
    res: str
    tf_atlas: str
    desc: str | None
    templateflow: bool
    licence: str
    citation: str


_SPECS: dict[str, _AtlasSpec] = {
    "CC200": _AtlasSpec("CC200", "CC200", "03", "CC200", None, False,
                        "LICENSE-CC200.txt", _CC200_CITATION),
    **{
        f"Schaefer2018-{n}": _AtlasSpec(
            f"Schaefer2018-{n}", f"Schaefer{n}", "02", "Schaefer2018",
            f"{n}Parcels7Networks", True, "LICENSE-Schaefer2018.txt", _SCHAEFER_CITATION,
        )
        for n in (200, 400, 1000)
    },
}

_ALIASES: dict[str, str] = {
    **{name.lower(): name for name in _SPECS},
    **{f"schaefer{n}": f"Schaefer2018-{n}" for n in (200, 400, 1000)},
}


def atlas_key(name: str) -> str:
    """An atlas name or ``atlas-`` label for comparison: lower case, letters and digits only
    (``Schaefer2018-200`` -> ``schaefer2018200``)."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


#: BIDS ``atlas-`` label of every built-in name and alias, by :func:`atlas_key`.
_LABELS: dict[str, str] = {atlas_key(alias): _SPECS[name].label
                           for alias, name in _ALIASES.items()}


def atlas_label(name: str) -> str:
    """The BIDS ``atlas-`` label that outputs of an atlas carry in their file names.

    The one mapping from atlas names to labels: the participant level names its outputs with it
    (``brainfm --atlases Schaefer2018-200`` writes ``atlas-Schaefer200``) and ``brainfm-train
    --atlas`` finds them with it.

    Parameters
    ----------
    name : str
        A built-in name or alias (``CC200``, ``Schaefer2018-200``, ``Schaefer200`` ...; any
        case, ``-``/``_`` ignored), or any other label (a user atlas or an imported dataset's,
        returned unchanged).

    Returns
    -------
    str
        ``CC200``, ``Schaefer200``, ``Schaefer400``, ``Schaefer1000``, or ``name`` stripped.

    Examples
    --------
    >>> atlas_label("Schaefer2018-200")
    'Schaefer200'
    >>> atlas_label("MyAtlas100")
    'MyAtlas100'
    """
    return _LABELS.get(atlas_key(name), str(name).strip())


def list_atlases() -> list[str]:
    """Names of the built-in atlases accepted by :func:`get_atlas`.

    Returns
    -------
    list of str
        ``['CC200', 'Schaefer2018-200', 'Schaefer2018-400', 'Schaefer2018-1000']``; the
        aliases ``Schaefer200``, ``Schaefer400`` and ``Schaefer1000`` (any case) are also
        accepted by :func:`get_atlas`.
    """
    return list(_SPECS)


def templateflow_home() -> Path:
    """The TemplateFlow home folder, computed as ``templateflow.conf.TF_HOME`` would be.

    Returns
    -------
    pathlib.Path
        ``$TEMPLATEFLOW_HOME`` if set, else the per-user cache folder ``templateflow``
        (``~/.cache/templateflow`` on Linux).
    """
    env = os.environ.get("TEMPLATEFLOW_HOME")
    if env:
        return Path(env).absolute()
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # platformdirs comes with templateflow; fall back to the XDG default
        return (Path.home() / ".cache" / "templateflow").absolute()
    return Path(user_cache_dir("templateflow")).absolute()


def templateflow_atlas(name: str, space: str) -> Path | None:
    """The user's TemplateFlow copy of a built-in atlas in another template space, if any.

    Parameters
    ----------
    name : str
        Built-in atlas name or alias.
    space : str
        TemplateFlow template (e.g. ``MNI152NLin2009cAsym``).

    Returns
    -------
    pathlib.Path or None
        A non-empty ``tpl-<space>/tpl-<space>_res-*_atlas-..._dseg.nii.gz`` in
        ``TEMPLATEFLOW_HOME`` (the bundled resolution first, then the finest), or ``None`` when
        the atlas is not in TemplateFlow (CC200) or the user has no copy.
    """
    spec = _SPECS[_resolve_name(name)]
    if not spec.templateflow:
        return None
    desc = f"_desc-{spec.desc}" if spec.desc else ""
    folder = templateflow_home() / f"tpl-{space}"
    found = [p for p in sorted(folder.glob(f"tpl-{space}_res-*_atlas-{spec.tf_atlas}{desc}"
                                           "_dseg.nii.gz")) if _non_empty(p)]
    found.sort(key=lambda p: (f"_res-{spec.res}_" not in p.name, p.name))
    return found[0] if found else None


def _base_name(spec: _AtlasSpec) -> str:
    desc = f"_desc-{spec.desc}" if spec.desc else ""
    return f"tpl-{SPACE}_res-{spec.res}_atlas-{spec.tf_atlas}{desc}_dseg"


def _non_empty(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _resolve_name(name: str) -> str:
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise UsageError(
            f"unknown atlas {name!r}; choose from {', '.join(list_atlases())} "
            "(aliases Schaefer200, Schaefer400, Schaefer1000), or give your own with "
            "--atlas-file and --atlas-labels"
        )
    return _ALIASES[key]


def _network_from_name(name: str) -> str:
    """Yeo network of a Schaefer ROI name such as ``7Networks_LH_Vis_1`` (-> ``Vis``)."""
    parts = name.split("_")
    return parts[2] if len(parts) >= 4 else ""


def get_atlas(name: str) -> Atlas:
    """Resolve a built-in atlas by its CLI name or alias (case-insensitive).

    Parameters
    ----------
    name : str
        ``CC200``, ``Schaefer2018-200``, ``Schaefer2018-400``, ``Schaefer2018-1000`` or an
        alias ``Schaefer200``/``Schaefer400``/``Schaefer1000``.

    Returns
    -------
    Atlas
        The TemplateFlow image when ``TEMPLATEFLOW_HOME`` holds a non-empty copy of it
        (``source='templateflow'``), otherwise the bundled image (``source='bundled'``). The
        ROI table is always the bundled one (the same rows as TemplateFlow's ``dseg.tsv``).

    Raises
    ------
    UsageError
        The name is not a known atlas (the message lists the valid names).
    InputError
        The bundled files are missing from the installation.
    """
    spec = _SPECS[_resolve_name(name)]
    base = _base_name(spec)
    bundled_image = ATLAS_DIR / f"{base}.nii.gz"
    table = ATLAS_DIR / f"{base}.tsv"
    image, source = bundled_image, "bundled"
    if spec.templateflow:
        tf_image = templateflow_home() / f"tpl-{SPACE}" / f"{base}.nii.gz"
        if _non_empty(tf_image):
            image, source = tf_image, "templateflow"
            LOGGER.debug("atlas %s: using the TemplateFlow copy %s", spec.name, tf_image)
    for path in (image, table):
        if not path.is_file():
            raise InputError(
                f"atlas file {path} is missing from the brainfm installation; reinstall brainfm"
            )
    labels = pd.read_csv(table, sep="\t")
    labels = pd.DataFrame({
        "index": labels["index"].astype(int).to_numpy(),
        "name": labels["name"].astype(str).to_numpy(),
    })
    if spec.tf_atlas == "Schaefer2018":
        labels["network"] = [_network_from_name(n) for n in labels["name"]]
    licence = ATLAS_DIR / spec.licence
    return Atlas(
        name=spec.name,
        label=spec.label,
        space=SPACE,
        image=image,
        labels=labels,
        source=source,
        licence_file=licence if licence.is_file() else None,
        citation=spec.citation,
    )


def roi_names(name: str) -> list[str]:
    """ROI names of a built-in atlas, in output column order.

    Parameters
    ----------
    name : str
        Atlas name or alias (see :func:`get_atlas`).

    Returns
    -------
    list of str
        For example ``['CC200_001', ..., 'CC200_200']``.
    """
    return get_atlas(name).labels["name"].tolist()


def brain_mask_file() -> Path:
    """The bundled MNI152NLin6Asym 2 mm brain mask (FSL MNI152 terms, see the README).

    Returns
    -------
    pathlib.Path
        ``tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz`` inside the package.
    """
    return ATLAS_DIR / f"tpl-{SPACE}_res-02_desc-brain_mask.nii.gz"


def _read_label_table(labels_file: Path) -> pd.DataFrame:
    if not labels_file.is_file():
        raise InputError(f"atlas label table {labels_file} does not exist; check --atlas-labels")
    try:
        table = pd.read_csv(labels_file, sep="\t")
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise InputError(
            f"cannot read atlas label table {labels_file} ({err}); it must be a tab-separated "
            "file with columns 'index' and 'name'"
        ) from err
    missing = [col for col in ("index", "name") if col not in table.columns]
    if missing:
        raise InputError(
            f"atlas label table {labels_file} lacks column(s) {', '.join(missing)} (found: "
            f"{', '.join(map(str, table.columns))}); it must be tab-separated with a header "
            "row containing 'index' and 'name'"
        )
    index = pd.to_numeric(table["index"], errors="coerce")
    if index.isna().any() or not np.all(np.mod(index.to_numpy(dtype=float), 1) == 0):
        raise InputError(
            f"atlas label table {labels_file}: column 'index' must hold integer label values"
        )
    index = index.astype(int)
    if (index <= 0).any():
        raise InputError(
            f"atlas label table {labels_file}: label values must be positive (0 is background)"
        )
    if index.duplicated().any():
        dup = sorted(set(index[index.duplicated()].tolist()))[:10]
        raise InputError(f"atlas label table {labels_file}: repeated index value(s) {dup}")
    names = table["name"]
    if names.isna().any() or (names.astype(str).str.strip() == "").any():
        raise InputError(f"atlas label table {labels_file}: every row needs a non-empty 'name'")
    names = names.astype(str)
    if names.duplicated().any():
        dup = sorted(set(names[names.duplicated()].tolist()))[:10]
        raise InputError(f"atlas label table {labels_file}: repeated ROI name(s) {dup}")
    out = pd.DataFrame({"index": index.to_numpy(), "name": names.to_numpy()})
    if "network" in table.columns:
        out["network"] = table["network"].astype(str).to_numpy()
    return out


def _read_label_image(image_file: Path) -> np.ndarray:
    if not image_file.is_file():
        raise InputError(f"atlas image {image_file} does not exist; check --atlas-file")
    try:
        img = nib.load(image_file)
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise InputError(
            f"cannot read atlas image {image_file} ({type(err).__name__}: {err}); it must be a "
            "readable NIfTI file (.nii or .nii.gz)"
        ) from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(
            f"atlas image {image_file} has shape {data.shape}; it must be a 3-D label image "
            "(one integer label per voxel), not a 4-D probabilistic atlas"
        )
    if not np.issubdtype(data.dtype, np.integer):
        values = np.asarray(data, dtype=np.float64)
        if not np.all(np.isfinite(values)) or np.any(np.mod(values, 1) != 0):
            raise InputError(
                f"atlas image {image_file} holds non-integer values; it must be a label image "
                "(integer labels, 0 = background), e.g. saved with an integer data type"
            )
        data = values.astype(np.int64)
    if np.any(data < 0):
        raise InputError(f"atlas image {image_file} holds negative labels; labels must be >= 0")
    return data


def custom_atlas(image_file: str | Path, labels_file: str | Path, name: str,
                 *, space: str = SPACE) -> Atlas:
    """Validate and describe a user atlas (``--atlas-file``/``--atlas-labels``).

    Parameters
    ----------
    image_file : str or pathlib.Path
        3-D integer label image (0 = background) in the same standard space as the BOLD data
        it will be applied to (it is resampled to the BOLD grid with nearest neighbour).
    labels_file : str or pathlib.Path
        Tab-separated table with columns ``index`` (label value) and ``name`` (unique ROI
        names); an optional ``network`` column is kept.
    name : str
        Alphanumeric name, used as the BIDS ``atlas-`` label.
    space : str, optional
        Standard space recorded for the atlas (default ``MNI152NLin6Asym``).

    Returns
    -------
    Atlas
        With ``source='user'``, ``licence_file=None``.

    Raises
    ------
    UsageError
        ``name`` is not alphanumeric.
    InputError
        The image or table is missing, unreadable or malformed, or the label values of the
        image and the table differ.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9]+", name):
        raise UsageError(
            f"atlas name {name!r} is not a valid BIDS label: use letters and digits only "
            "(e.g. --atlas-name MyAtlas100)"
        )
    if name.lower() in _ALIASES or name in {s.label for s in _SPECS.values()}:
        raise UsageError(
            f"atlas name {name!r} is already used by a built-in atlas; choose another "
            "--atlas-name"
        )
    image_file = Path(image_file)
    labels_file = Path(labels_file)
    data = _read_label_image(image_file)
    table = _read_label_table(labels_file)
    present = set(np.unique(data).tolist()) - {0}
    listed = set(table["index"].tolist())
    if present != listed:
        not_listed = sorted(present - listed)
        not_present = sorted(listed - present)
        parts = []
        if not_listed:
            parts.append(f"labels in the image but not in the table: {not_listed[:10]}"
                         + (" ..." if len(not_listed) > 10 else ""))
        if not_present:
            parts.append(f"indices in the table but not in the image: {not_present[:10]}"
                         + (" ..." if len(not_present) > 10 else ""))
        raise InputError(
            f"atlas image {image_file} and label table {labels_file} do not match ("
            + "; ".join(parts) + "); every non-zero label must have exactly one table row"
        )
    return Atlas(
        name=name,
        label=name,
        space=space,
        image=image_file,
        labels=table,
        source="user",
        licence_file=None,
        citation=f"User-supplied atlas {image_file.name} (labels {labels_file.name})",
    )


def resolve_atlases(names: list[str], atlas_file: str | Path | None = None,
                    atlas_labels: str | Path | None = None,
                    atlas_name: str = "Custom") -> list[Atlas]:
    """Resolve bundled/TemplateFlow atlas names plus an optional user atlas.

    Parameters
    ----------
    names : list of str
        Atlas names (``CC200``, ``Schaefer2018-400`` ...).
    atlas_file, atlas_labels : path, optional
        A user atlas: a 3-D label image in the BOLD's standard space and its ``index``/``name``
        table.
    atlas_name : str
        The BIDS ``atlas-`` label of the user atlas.
    """
    atlases = [get_atlas(name) for name in names]
    if atlas_file:
        atlases.append(custom_atlas(atlas_file, atlas_labels, atlas_name))
    return atlases
