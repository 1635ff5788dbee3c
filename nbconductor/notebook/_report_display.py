"""The report in a notebook: its table as Markdown, then its plot."""

from __future__ import annotations


def show_report(rep: dict) -> None:
    """Display the report in a notebook: the table, then the plot (skipped without matplotlib)."""
    from IPython.display import Image, Markdown, display

    from .._errors import MissingDependency
    from ..store._report import figure_png, report_figure, report_markdown

    display(Markdown(report_markdown(rep)))
    if not rep["steps"]:
        return
    try:
        display(Image(figure_png(report_figure(rep))))
    except MissingDependency as exc:
        display(Markdown(f"*{exc}*"))
