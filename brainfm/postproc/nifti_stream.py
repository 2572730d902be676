"""Read a 4-D NIfTI image a block of volumes at a time, never holding the whole series.

nibabel reads a ``.nii.gz`` with Python's :mod:`gzip`, whose inflater is about three times
slower than python-isal's ``igzip`` (ISA-L), and builds the whole 4-D array. This module reads
the header with nibabel, then inflates the voxel data with ``isal.igzip`` (the standard library
when python-isal is not installed) in blocks of whole volumes; an uncompressed ``.nii`` is
memory-mapped. Each block is scaled by ``scl_slope``/``scl_inter`` with nibabel's own
:func:`nibabel.volumeutils.apply_read_scaling`, so values are those of ``img.get_fdata()``
(float32 data stay float32; scaled integers are float64, where nibabel's float32 read would
round them).

nibabel cannot do this itself: slicing ``img.dataobj[..., a:b]`` of a ``.nii.gz`` re-opens the
file and re-inflates it from the start for every block unless ``indexed_gzip`` is installed,
and even then through the slow inflater.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling

try:  # optional speed-up: ISA-L's inflater (a PyPI wheel), ~3x the standard library
    from isal import igzip as _fast_gzip
    from isal.isal_zlib import error as _IsalError
except ImportError:  # pragma: no cover - exercised where python-isal is absent
    _fast_gzip = None
    _IsalError = zlib.error

from brainfm.errors import InputError

#: Errors that mean "the file is not a readable NIfTI image".
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, _IsalError,
               nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError)

#: Raw bytes read per block (whole volumes; at least one volume).
BLOCK_BYTES = 8 * 2**20


@dataclass(frozen=True)
class NiftiSeries:
    """Header facts of a 4-D NIfTI series, read without touching the voxel data.

    Attributes
    ----------
    path : Path
        The image.
    shape : tuple of int
        ``(X, Y, Z, T)``.
    affine : ndarray of shape (4, 4)
        Voxel-to-world affine (nibabel's choice of sform/qform).
    dtype : numpy.dtype
        On-disk data type (with its byte order).
    offset : int
        Byte offset of the voxel data (in the uncompressed stream).
    slope, inter : float
        Scaling of the stored values (1 and 0 when unscaled).
    """

    path: Path
    shape: tuple[int, int, int, int]
    affine: np.ndarray
    dtype: np.dtype
    offset: int
    slope: float
    inter: float

    @property
    def n_voxels(self) -> int:
        """Voxels per volume."""
        return int(np.prod(self.shape[:3]))

    @property
    def n_volumes(self) -> int:
        """Volumes in the series."""
        return int(self.shape[3])


def open_series(path: str | Path) -> NiftiSeries:
    """Read and check the header of a 4-D NIfTI series.

    Parameters
    ----------
    path : str or Path
        A ``.nii`` or ``.nii.gz`` image.

    Returns
    -------
    NiftiSeries
        Its shape, affine and header.

    Raises
    ------
    InputError
        Missing, not a NIfTI image, or not a 4-D series of at least 2 volumes.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"BOLD file {path} does not exist")
    try:
        img = nib.load(path)
    except READ_ERRORS as err:
        raise InputError(
            f"cannot read BOLD file {path} ({type(err).__name__}: {err}); it must be a "
            "NIfTI image (.nii or .nii.gz): re-run or re-copy the preprocessing output"
        ) from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"BOLD file {path} is a {type(img).__name__}, not a NIfTI image; "
                         "give the preprocessed .nii or .nii.gz run")
    if len(img.shape) != 4 or img.shape[3] < 2:
        raise InputError(
            f"BOLD file {path} has shape {img.shape}; a 4-D time series with at least 2 "
            "volumes is required (was a single volume or a mask given as BOLD?)"
        )
    proxy = img.dataobj  # nibabel's reading of offset, data type and scaling
    return NiftiSeries(path=path, shape=tuple(int(s) for s in img.shape), affine=img.affine,
                       dtype=np.dtype(proxy.dtype), offset=int(proxy.offset),
                       slope=float(proxy.slope), inter=float(proxy.inter))


def _scale(raw: np.ndarray, series: NiftiSeries) -> np.ndarray:
    """Apply ``scl_slope``/``scl_inter`` with nibabel's rules; at least float32."""
    scaled = apply_read_scaling(raw, series.slope, series.inter)
    return scaled.astype(np.promote_types(scaled.dtype, np.float32), copy=False)


def _truncated(path: Path, err: Exception | None = None) -> InputError:
    detail = f" ({type(err).__name__}: {err})" if err is not None else ""
    return InputError(
        f"cannot read the voxel data of BOLD file {path}{detail}; the file is truncated or "
        "corrupt: re-run or re-copy the preprocessing output"
    )


def iter_volume_blocks(series: NiftiSeries, block_bytes: int | None = None
                       ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_volume, block)`` with ``block`` of shape ``(t, V)``, in file order.

    Voxels are in NIfTI (Fortran) order, ``x`` fastest, as ``data.reshape(-1, order="F")``.
    A block is float32 (float64 when the image's scaled type needs it) and is only valid
    until the next one is requested.

    Parameters
    ----------
    series : NiftiSeries
        From :func:`open_series`.
    block_bytes : int, optional
        Raw bytes per block (rounded down to whole volumes, at least one; default
        :data:`BLOCK_BYTES`).

    Raises
    ------
    InputError
        The file ends early or its compressed stream is corrupt.
    """
    dtype, offset = series.dtype, series.offset
    n_vox, n_vols = series.n_voxels, series.n_volumes
    block_bytes = BLOCK_BYTES if block_bytes is None else int(block_bytes)
    per_block = max(1, block_bytes // (n_vox * dtype.itemsize))
    path = series.path
    if path.name.endswith(".gz"):
        opener = _fast_gzip.open if _fast_gzip is not None else gzip.open
        try:
            with opener(path, "rb") as stream:
                stream.seek(offset)
                buffer = bytearray(per_block * n_vox * dtype.itemsize)
                for start in range(0, n_vols, per_block):
                    count = min(per_block, n_vols - start)
                    view = memoryview(buffer)[: count * n_vox * dtype.itemsize]
                    got = stream.readinto(view)
                    while 0 < got < len(view):  # readinto may return short reads
                        more = stream.readinto(view[got:])
                        if not more:
                            break
                        got += more
                    if got != len(view):
                        raise _truncated(path)
                    raw = np.frombuffer(view, dtype=dtype).reshape(count, n_vox)
                    yield start, _scale(raw, series)
        except READ_ERRORS as err:
            raise _truncated(path, err) from err
        return
    needed = offset + n_vox * n_vols * dtype.itemsize
    if path.stat().st_size < needed:
        raise _truncated(path)
    data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(n_vols, n_vox))
    for start in range(0, n_vols, per_block):
        yield start, _scale(np.asarray(data[start:start + per_block]), series)
