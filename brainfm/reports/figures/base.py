"""Shared pieces of the report figures: the Agg figure, its PNG as base64, the img tag, colours.

Every figure draws on its own :class:`matplotlib.figure.Figure` (no pyplot state, so it is
safe in worker processes without a display) and returns the PNG as a base64 string, ready
for an ``<img src="data:image/png;base64,...">`` tag (see :func:`img_tag`).
"""

from __future__ import annotations

import base64
import functools
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

#: Resolution of the report figures (dots per inch).
DPI = 90
#: Colours of the experts (dominant-expert map and legends), cycled beyond ten.
EXPERT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                  "#7f7f7f", "#bcbd22", "#17becf")
_POINT = "#3465a4"
_CORRECTED = "#cc5500"
_CUTS_Z = (-30, -12, 6, 24, 42, 60)


@functools.cache
def _brain_background() -> nib.Nifti1Image:
    """The bundled 2 mm MNI152NLin6Asym T1w brain, the grid of the bundled atlases.

    nilearn's default background is its 1 mm template: every parcel map is then resampled to
    1 mm (four times the time of the whole figure, and the participant level's largest memory
    peak, for no detail an atlas at 2-3 mm has).
    """
    from brainfm.preproc.templates import template_t1w_file

    return nib.load(template_t1w_file())


def new_figure(width: float, height: float) -> Figure:
    """A figure (inches) with an Agg canvas attached, independent of pyplot."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def figure_to_base64(fig: Figure, dpi: int = DPI) -> str:
    """Render a figure to PNG and return it base64-encoded (ASCII).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    dpi : int
        Resolution.

    Returns
    -------
    str
        Base64 of the PNG bytes.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def img_tag(b64_png: str, alt: str, css_class: str = "figure") -> str:
    """An ``<img>`` element holding a base64 PNG inline (no external file).

    Parameters
    ----------
    b64_png : str
        From :func:`figure_to_base64` (or any figure function of this module).
    alt : str
        Alternative text (escaped).
    css_class : str
        CSS class of the element.

    Returns
    -------
    str
        The HTML element.
    """
    return (f'<img class="{html.escape(css_class)}" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{b64_png}">')


def _finite(*arrays: Any) -> tuple[np.ndarray, ...]:
    arrs = [np.asarray(a, dtype=float).ravel() for a in arrays]
    keep = np.ones(arrs[0].shape, dtype=bool)
    for a in arrs:
        keep &= np.isfinite(a)
    return tuple(a[keep] for a in arrs)


def _fit_line(ax: Any, x: np.ndarray, y: np.ndarray, colour: str, label: str | None = None
              ) -> None:
    if x.size >= 3 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        xs = np.array([x.min(), x.max()])
        ax.plot(xs, slope * xs + intercept, color=colour, lw=1.5, ls="--", label=label)


def _r(x: np.ndarray, y: np.ndarray) -> str:
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return "r = n/a"
    return f"r = {np.corrcoef(x, y)[0, 1]:.2f}"


def _pretty(name: str) -> str:
    return name.replace("_", " ")

