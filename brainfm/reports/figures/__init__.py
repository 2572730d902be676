"""Report figures: matplotlib and nilearn plots returned as base64-encoded PNG.

Every function draws on its own :class:`matplotlib.figure.Figure` (no pyplot state, so it is
safe in worker processes without a display) and returns the PNG as a base64 string, ready for an
``<img src="data:image/png;base64,...">`` tag (see :func:`img_tag`). One module per kind of
figure: :mod:`.base` (shared pieces), :mod:`.accuracy` (predictions against known values),
:mod:`.brain` (maps on the brain) and :mod:`.signals` (a run's signals); every public name is
importable from here.
"""

from brainfm.reports.figures.accuracy import (
    plot_distribution,
    plot_gap_vs_age,
    plot_pred_vs_true,
    plot_prediction_intervals,
    plot_qc_vs_predictions,
    pred_vs_true_figure,
)
from brainfm.reports.figures.base import (
    DPI,
    EXPERT_COLOURS,
    figure_to_base64,
    img_tag,
    new_figure,
)
from brainfm.reports.figures.brain import (
    paint_atlas,
    plot_dominant_expert,
    plot_expert_weight_maps,
)
from brainfm.reports.figures.signals import (
    plot_carpets,
    plot_connectivity,
    plot_design_matrix,
    plot_fd_trace,
    plot_roi_carpet,
)

__all__ = [
    "DPI",
    "EXPERT_COLOURS",
    "figure_to_base64",
    "img_tag",
    "new_figure",
    "paint_atlas",
    "plot_carpets",
    "plot_connectivity",
    "plot_design_matrix",
    "plot_distribution",
    "plot_dominant_expert",
    "plot_expert_weight_maps",
    "plot_fd_trace",
    "plot_gap_vs_age",
    "plot_pred_vs_true",
    "plot_prediction_intervals",
    "plot_qc_vs_predictions",
    "plot_roi_carpet",
    "pred_vs_true_figure",
]
