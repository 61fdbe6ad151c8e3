"""The report stage: a self-contained HTML page and publication PNGs of an explain run."""

from stages.report.build import build_report
from stages.report.overlay import heatmap_rgba, outline, overlay, save_png

__all__ = ["build_report", "heatmap_rgba", "outline", "overlay", "save_png"]
