"""``%conductor compare STEP --data FILE [--variants a,b] [--repeats N] [--workers N]``."""

from __future__ import annotations

import time
from pathlib import Path

from IPython.core.error import UsageError
from IPython.display import Markdown, display

from .._errors import OptionError


def read_data(path: str) -> list[dict]:
    """The rows of a compare's ``--data`` file (csv, yaml, json, jsonl); `OptionError` naming it."""
    from ..handoff._batch import read_rows

    try:
        return read_rows(path)
    except OptionError as exc:
        raise OptionError(str(exc).replace("--params", "--data")) from None


def split_variants(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def cmd_compare(m, words):
    """Compare a step's variants over a dataset; shows the figures, verdicts and the grid."""
    from ._commands import _args

    a = _args(
        "compare",
        words,
        (["step"], {"nargs": "?"}),
        (["--data"], {}),
        (["--variants"], {}),
        (["--repeats"], {"type": int, "default": 1}),
        (["--workers"], {"type": int}),
        (["--pairwise"], {}),
    )
    if not a.step or not a.data:
        raise UsageError(
            "%conductor compare needs a step and a dataset: %conductor compare STEP --data FILE "
            "[--variants base,NAME] [--repeats N] [--workers N]"
        )
    rows = read_data(str(Path(m.pipeline.root) / a.data))  # an absolute path stays as it is
    handle = display(Markdown(f"*compare {a.step}: starting…*"), display_id=True)
    shown = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - shown[0] > 0.5:
            shown[0] = now
            bar = "█" * (20 * done // max(total, 1))
            if handle is not None:
                handle.update(Markdown(f"*compare {a.step}: `{bar:<20}` {done}/{total} cells*"))

    result = m.pipeline.compare(
        a.step,
        rows,
        variants=split_variants(a.variants),
        repeats=a.repeats,
        workers=a.workers,
        progress=progress,
        pairwise=a.pairwise,
        data=a.data,
    )
    m.shell.user_ns["_compare"] = result
    widget = compare_widget(result, m.pipeline.store, pickable=bool(a.pairwise) or None)
    m.shell.user_ns["_compare_widget"] = widget
    display(widget)
    _show_plots(result)
    return None


def compare_widget(result, store, pickable: bool | None = None):
    """The compare widget for ``result`` (its static HTML when anywidget cannot load)."""
    try:
        from .widgets.compare import CompareWidget
    except ImportError:
        return result
    return CompareWidget(result, store, pickable=pickable)


def _show_plots(result) -> None:
    from IPython.display import Image

    from .._errors import MissingDependency
    from ..render._compare import compare_figure

    try:
        fig = compare_figure(result)
    except MissingDependency as exc:
        display(Markdown(f"*{exc}*"))
        return
    import io

    buf = io.BytesIO()
    fig.canvas.print_png(buf)
    display(Image(buf.getvalue()))


def cmd_promote(m, words):
    """``%conductor promote STEP NAME``: the variant becomes the step, and the notebook gets the
    ``%%step`` cell that declares it (below this one, through ``set_next_input``)."""
    from ..handoff._export import step_cell

    if len(words) != 2:
        raise UsageError(
            "%conductor promote needs a step and a variant: %conductor promote STEP NAME"
        )
    step, name = words
    declared = m.pipeline.promote(step, name)
    source = step_cell(declared.replace(lazy=False))
    m.cells[step] = source
    m.cells.pop(f"variant:{step}:{name}", None)
    m.shell.set_next_input(source, replace=False)
    display(
        Markdown(
            f"*`{name}` is now the step `{step}`: its `%%step` cell is below — run it (or "
            f"`%conductor run`) to use it, and delete the old `%%step {step}` and "
            f"`%%variant {step} {name}` cells when you are done comparing.*"
        )
    )
