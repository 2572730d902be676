"""Time series painted into the synthetic BOLD: neural ROI signals and physiological nuisance.

Neural ROI signals come either from real ABIDE PCP CC200 ROI time series (read from
``rois_cc200.tar.xz`` or a ``rois_cc200/`` folder of ``.1D`` files in ``abide_dir``) or from a
synthetic generator: band-limited (0.01-0.1 Hz) noise with a shared network structure.
"""

from __future__ import annotations

import math
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
from scipy.cluster.vq import kmeans2

from brainfm.errors import InputError, UsageError
from brainfm.importers.pcp import SITE_REPETITION_TIME

ABIDE_ARCHIVE = "rois_cc200.tar.xz"
ABIDE_FOLDER = "rois_cc200"
ABIDE_PHENOTYPE = "Phenotypic_V1_0b_preprocessed1.csv"
ABIDE_SUFFIX = "_rois_cc200.1D"

#: Repetition time (s) of the ABIDE I sites (the importer's table). Used only to prefer subjects
#: whose site's TR matches the requested one; recorded in the truth files.
ABIDE_SITE_TR = SITE_REPETITION_TIME

#: Neural signal band (Hz) of the synthetic ROI series.
NEURAL_BAND = (0.01, 0.1)


def bandlimited_noise(
    rng: np.random.Generator, n: int, tr: float, band: tuple[float, float], size: int = 1
) -> np.ndarray:
    """Draw unit-variance Gaussian noise restricted to a frequency band.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    n : int
        Number of time points.
    tr : float
        Sampling interval in seconds.
    band : tuple of float
        (low, high) pass band in Hz; the part above the Nyquist frequency is ignored. When the
        band holds no frequency bin at all, the lowest non-zero bin is used.
    size : int
        Number of independent series.

    Returns
    -------
    numpy.ndarray
        Array of shape (n, size), each column with mean 0 and SD 1.
    """
    freqs = np.fft.rfftfreq(n, d=tr)
    keep = (freqs >= band[0]) & (freqs <= band[1]) & (freqs > 0)
    if not keep.any():
        keep = np.zeros_like(keep)
        keep[min(1, len(freqs) - 1)] = True
    spec = rng.standard_normal((len(freqs), size)) + 1j * rng.standard_normal((len(freqs), size))
    spec[~keep] = 0.0
    x = np.fft.irfft(spec, n=n, axis=0)
    x -= x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd == 0] = 1.0
    return x / sd


def network_assignment(
    centroids_mm: np.ndarray, n_networks: int, rng: np.random.Generator
) -> np.ndarray:
    """Group ROIs into bilateral networks by clustering their mirrored centroids.

    Parameters
    ----------
    centroids_mm : numpy.ndarray
        (n_rois, 3) ROI centroids in mm (NaN rows for ROIs absent from the grid).
    n_networks : int
        Number of networks.
    rng : numpy.random.Generator
        Random generator (k-means initialisation).

    Returns
    -------
    numpy.ndarray
        (n_rois,) integer network index of each ROI.
    """
    pts = np.nan_to_num(centroids_mm.copy())
    pts[:, 0] = np.abs(pts[:, 0])  # homologous left/right regions share a network
    seed = int(rng.integers(0, 2**31 - 1))
    _, labels = kmeans2(pts, n_networks, minit="++", seed=seed)
    return labels.astype(int)


def synthetic_roi_signals(
    rng: np.random.Generator, n: int, tr: float, networks: np.ndarray, shared: float = 0.6
) -> np.ndarray:
    """Synthetic ROI series: band-limited noise with shared network fluctuations.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    n : int
        Number of time points.
    tr : float
        Repetition time in seconds.
    networks : numpy.ndarray
        (n_rois,) network index per ROI (from :func:`network_assignment`).
    shared : float
        Fraction of each ROI's variance carried by its network's common signal.

    Returns
    -------
    numpy.ndarray
        (n, n_rois) series, each with mean 0 and SD 1, in 0.01-0.1 Hz.
    """
    n_rois = len(networks)
    common = bandlimited_noise(rng, n, tr, NEURAL_BAND, int(networks.max()) + 1)
    own = bandlimited_noise(rng, n, tr, NEURAL_BAND, n_rois)
    x = math.sqrt(shared) * common[:, networks] + math.sqrt(1.0 - shared) * own
    x -= x.mean(axis=0)
    return x / x.std(axis=0)


def reflect_tile(x: np.ndarray, n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Take ``n`` rows from ``start`` of ``x`` extended by reflection (forward, back, ...).

    Parameters
    ----------
    x : numpy.ndarray
        (T, ...) array.
    n : int
        Number of rows wanted.
    start : int
        First row (in the reflected extension).

    Returns
    -------
    rows : numpy.ndarray
        (n, ...) rows.
    index : numpy.ndarray
        (n,) index into ``x`` of each returned row.
    """
    t = x.shape[0]
    k = np.arange(start, start + n)
    if t == 1:
        index = np.zeros(n, dtype=int)
    else:
        period = 2 * t
        m = k % period
        index = np.where(m < t, m, period - 1 - m)
    return x[index], index


@dataclass(frozen=True)
class AbideSubject:
    """One ABIDE PCP subject: its CC200 ROI series and phenotype.

    Attributes
    ----------
    file_id : str
        PCP ``FILE_ID`` (e.g. ``CMU_a_0050642``).
    site : str
        ``SITE_ID``.
    site_tr : float or None
        The site's repetition time from :data:`ABIDE_SITE_TR` (None when unknown).
    series : numpy.ndarray
        (T, 200) ROI time series as stored by PCP.
    age : float or None
        ``AGE_AT_SCAN`` in years.
    sex : str or None
        ``"M"`` or ``"F"`` (PCP ``SEX`` 1 / 2).
    piq : float or None
        Performance IQ (``PIQ``), the fluid-intelligence proxy.
    """

    file_id: str
    site: str
    site_tr: float | None
    series: np.ndarray
    age: float | None
    sex: str | None
    piq: float | None


def _value(x: object) -> float | None:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v) or v == -9999:
        return None
    return v


def find_phenotype(abide_dir: Path) -> Path:
    """Return the PCP phenotype CSV inside ``abide_dir``.

    Parameters
    ----------
    abide_dir : pathlib.Path
        Folder with the ABIDE PCP CC200 data.

    Returns
    -------
    pathlib.Path
        ``Phenotypic_V1_0b_preprocessed1.csv`` (or another ``Phenotypic_V1_0b_preprocessed*.csv``).

    Raises
    ------
    InputError
        If no phenotype file is there.
    """
    path = abide_dir / ABIDE_PHENOTYPE
    if path.is_file():
        return path
    found = sorted(abide_dir.glob("Phenotypic_V1_0b_preprocessed*.csv"))
    if found:
        return found[0]
    raise InputError(
        f"ABIDE phenotype file {path} not found: --abide-dir must be the folder holding "
        f"{ABIDE_PHENOTYPE} and {ABIDE_ARCHIVE} (or a {ABIDE_FOLDER}/ folder of .1D files)"
    )


def read_phenotype(path: Path) -> dict[str, dict[str, object]]:
    """Read the PCP phenotype sheet into ``{FILE_ID: row}``.

    Parameters
    ----------
    path : pathlib.Path
        The phenotype CSV.

    Returns
    -------
    dict
        Rows keyed by ``FILE_ID``, with ``site``, ``age``, ``sex`` and ``piq`` (None = missing).

    Raises
    ------
    InputError
        If the file cannot be read or lacks the needed columns.
    """
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read ABIDE phenotype file {path}: {exc}") from exc
    need = {"FILE_ID", "SITE_ID", "AGE_AT_SCAN", "SEX", "PIQ"}
    missing = need - set(df.columns)
    if missing:
        raise InputError(
            f"ABIDE phenotype file {path} lacks column(s) {sorted(missing)}: "
            "expected the PCP Phenotypic_V1_0b_preprocessed1.csv sheet"
        )
    out: dict[str, dict[str, object]] = {}
    for row in df.itertuples(index=False):
        fid = str(row.FILE_ID).strip()
        if not fid or fid == "no_filename":
            continue
        sex_code = _value(row.SEX)
        out[fid] = {
            "site": str(row.SITE_ID).strip(),
            "age": _value(row.AGE_AT_SCAN),
            "sex": {1.0: "M", 2.0: "F"}.get(sex_code) if sex_code is not None else None,
            "piq": _value(row.PIQ),
        }
    return out


@contextmanager
def _open_archive(path: Path) -> Iterator[tarfile.TarFile]:
    try:
        tf = tarfile.open(path, "r:*")
    except (OSError, tarfile.TarError) as exc:
        raise InputError(f"cannot open ABIDE archive {path}: {exc}") from exc
    try:
        yield tf
    finally:
        tf.close()


def _parse_1d(fh: IO[bytes], where: str) -> np.ndarray:
    try:
        x = np.loadtxt(fh, comments="#", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise InputError(f"malformed ABIDE ROI file {where}: {exc}") from exc
    if x.shape[1] != 200 or x.shape[0] < 2 or not np.isfinite(x).all():
        raise InputError(
            f"malformed ABIDE ROI file {where}: expected T rows x 200 finite CC200 columns, "
            f"got shape {x.shape}"
        )
    return x


def _iter_members(abide_dir: Path) -> Iterator[tuple[str, object]]:
    """Yield ``(FILE_ID, reader)`` in storage order; ``reader()`` returns the (T, 200) array."""
    archive = abide_dir / ABIDE_ARCHIVE
    folder = abide_dir / ABIDE_FOLDER
    if archive.is_file():
        with _open_archive(archive) as tf:
            try:
                for member in tf:
                    name = member.name.rsplit("/", 1)[-1]
                    if not member.isfile() or not name.endswith(ABIDE_SUFFIX):
                        continue

                    def reader(m: tarfile.TarInfo = member) -> np.ndarray:
                        fh = tf.extractfile(m)
                        if fh is None:
                            raise InputError(f"cannot read {m.name} from {archive}")
                        return _parse_1d(fh, f"{archive}:{m.name}")

                    yield name[: -len(ABIDE_SUFFIX)], reader
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise InputError(f"corrupt ABIDE archive {archive}: {exc}") from exc
    elif folder.is_dir():
        for path in sorted(folder.glob(f"*{ABIDE_SUFFIX}")):

            def reader(p: Path = path) -> np.ndarray:
                with p.open("rb") as fh:
                    return _parse_1d(fh, str(p))

            yield path.name[: -len(ABIDE_SUFFIX)], reader
    else:
        raise InputError(
            f"no ABIDE CC200 ROI data in {abide_dir}: expected {ABIDE_ARCHIVE} or a "
            f"{ABIDE_FOLDER}/ folder of *{ABIDE_SUFFIX} files"
        )


def select_abide_subjects(
    abide_dir: Path,
    n_subjects: int,
    *,
    min_volumes: int,
    tr: float,
    file_ids: Sequence[str] | None = None,
) -> list[AbideSubject]:
    """Read ``n_subjects`` ABIDE subjects' CC200 series, streaming the archive once.

    Without ``file_ids`` the first subjects in storage order are taken that have age, sex and
    PIQ, whose site's TR equals ``tr`` (within 1 ms) and that have at least ``min_volumes``
    volumes; when too few qualify (the whole archive is then read, about 8 s), the gap is filled
    by the first subjects with a matching TR and PIQ but fewer volumes (their series get tiled),
    then with PIQ, then with age and sex only. Subjects with fewer than 100 non-zero ROI
    columns are skipped. The archive is read sequentially, never unpacked.

    Parameters
    ----------
    abide_dir : pathlib.Path
        Folder with ``rois_cc200.tar.xz`` (or ``rois_cc200/*.1D``) and the phenotype CSV.
    n_subjects : int
        Number of subjects wanted.
    min_volumes : int
        Preferred minimum number of volumes.
    tr : float
        Requested repetition time.
    file_ids : sequence of str, optional
        Explicit PCP ``FILE_ID`` values to use, in this order.

    Returns
    -------
    list of AbideSubject
        The subjects, in fixture-subject order.

    Raises
    ------
    InputError
        If the data are missing or malformed, or requested ``file_ids`` are absent.
    UsageError
        If ``file_ids`` does not hold ``n_subjects`` distinct IDs.
    """
    abide_dir = Path(abide_dir)
    if not abide_dir.is_dir():
        raise InputError(f"ABIDE folder {abide_dir} does not exist (check --abide-dir)")
    pheno = read_phenotype(find_phenotype(abide_dir))

    def make(fid: str, series: np.ndarray) -> AbideSubject:
        row = pheno.get(fid, {})
        site = str(row.get("site", fid.split("_")[0]))
        return AbideSubject(
            file_id=fid,
            site=site,
            site_tr=ABIDE_SITE_TR.get(site.upper()),
            series=series,
            age=row.get("age"),  # type: ignore[arg-type]
            sex=row.get("sex"),  # type: ignore[arg-type]
            piq=row.get("piq"),  # type: ignore[arg-type]
        )

    if file_ids is not None:
        wanted = [str(f) for f in file_ids]
        if len(wanted) != n_subjects or len(set(wanted)) != len(wanted):
            raise UsageError(
                f"abide_file_ids must hold {n_subjects} distinct FILE_IDs (one per subject), "
                f"got {wanted}"
            )
        found: dict[str, np.ndarray] = {}
        for fid, reader in _iter_members(abide_dir):
            if fid in wanted and fid not in found:
                found[fid] = reader()  # type: ignore[operator]
                if len(found) == len(wanted):
                    break
        absent = [f for f in wanted if f not in found]
        if absent:
            raise InputError(f"ABIDE FILE_ID(s) {absent} not found in {abide_dir}")
        return [make(f, found[f]) for f in wanted]

    # Tiers, best first: TR match + PIQ + long enough; TR match + PIQ; PIQ; age and sex only.
    tiers: list[list[AbideSubject]] = [[], [], [], []]
    for fid, reader in _iter_members(abide_dir):
        row = pheno.get(fid)
        if row is None or row["age"] is None or row["sex"] is None:
            continue
        site_tr = ABIDE_SITE_TR.get(str(row["site"]).upper())
        tr_ok = site_tr is not None and abs(site_tr - tr) < 1e-3
        complete = row["piq"] is not None
        best = 0 if tr_ok and complete else (2 if complete else 3)
        if all(len(t) >= n_subjects for t in tiers[best:]):
            continue
        subject = make(fid, reader())  # type: ignore[operator]
        if np.count_nonzero(subject.series.std(axis=0) > 0) < 100:
            continue  # most ROIs outside the field of view
        tier = 1 if best == 0 and subject.series.shape[0] < min_volumes else best
        if len(tiers[tier]) < n_subjects:
            tiers[tier].append(subject)
        if len(tiers[0]) == n_subjects:
            break
    chosen = [s for t in tiers for s in t][:n_subjects]
    if len(chosen) < n_subjects:
        raise InputError(
            f"{abide_dir} holds only {len(chosen)} usable ABIDE subject(s) with age and sex; "
            f"{n_subjects} requested"
        )
    return chosen
