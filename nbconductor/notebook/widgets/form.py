"""An intake form built from a pipeline's parameters, with a Run button.

``IntakeForm({"topic": "…", "words": 400, "markets": ["fr", "de"]}, on_run=run)`` gives one
typed field per parameter; Run calls ``on_run(values)`` with values of the defaults' types and
shows what it prints, returns or raises below the button. So a brief goes in through a fixed
structure rather than free text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from html import escape
from typing import Any

import ipywidgets as w

__all__ = ["IntakeForm", "field_for"]

LONG_TEXT = 60  # a str default longer than this (or multi-line) gets a Textarea


def field_for(value: Any) -> w.DOMWidget:
    """Return the input widget for a parameter whose default is ``value``.

    str → Text (Textarea if long or multi-line), bool → Checkbox, int → IntText,
    float → FloatText, list of str → TagsInput, None → Text (empty means None),
    anything else JSON-serialisable → Textarea holding JSON.
    """
    full = w.Layout(width="100%")
    if isinstance(value, bool):  # before int: bool is an int subclass
        return w.Checkbox(value=value, indent=False)
    if isinstance(value, int):
        return w.IntText(value=value, layout=full)
    if isinstance(value, float):
        return w.FloatText(value=value, layout=full)
    if isinstance(value, str):
        if len(value) > LONG_TEXT or "\n" in value:
            return w.Textarea(value=value, rows=min(max(value.count("\n") + 2, 3), 12), layout=full)
        return w.Text(value=value, layout=full)
    if value is None:
        return w.Text(value="", placeholder="(none)", layout=full)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return w.TagsInput(value=[v for v in value if v], allow_duplicates=False, layout=full)
    return w.Textarea(value=json.dumps(value, indent=2, default=str), rows=4, layout=full)


def _read(name: str, default: Any, field: w.DOMWidget) -> Any:
    if isinstance(field, w.TagsInput):
        return list(field.value) if not isinstance(default, tuple) else tuple(field.value)
    if isinstance(field, w.Textarea) and not isinstance(default, str):
        try:
            return json.loads(field.value)
        except ValueError as exc:
            raise ValueError(f"parameter {name!r} must be JSON: {exc}") from None
    if default is None and isinstance(field, w.Text):
        return field.value or None
    return field.value


class IntakeForm(w.VBox):
    """A form with one typed field per parameter and a Run button.

    ``fields`` maps parameter names to their input widgets, ``run_button`` is the button and
    ``output`` the area showing the run's prints, result or error. ``last_result`` and
    ``last_error`` keep the outcome of the latest run.
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        on_run: Callable[[dict[str, Any]], Any] | None = None,
        *,
        title: str = "Brief",
        run_label: str = "Run",
    ) -> None:
        from ..._params import check_names

        check_names(
            params, "intake form"
        )  # a ParameterError (a ValueError): the form binds these names
        self.params = dict(params)
        self.on_run = on_run
        self.last_result: Any = None
        self.last_error: BaseException | None = None
        self.fields: dict[str, w.DOMWidget] = {n: field_for(v) for n, v in self.params.items()}
        self.run_button = w.Button(description=run_label, button_style="primary", icon="play")
        self.status = w.HTML()
        self.output = w.Output()
        rows = [
            w.HBox(
                [w.Label(name, layout=w.Layout(width="150px", flex="0 0 150px")), field],
                layout=w.Layout(align_items="center", width="100%", max_width="720px"),
            )
            for name, field in self.fields.items()
        ]
        super().__init__(
            [
                w.HTML(f"<b>{escape(title)}</b>"),
                *rows,
                w.HBox([self.run_button, self.status], layout=w.Layout(align_items="center")),
                self.output,
            ]
        )
        self.add_class("nbc-form")
        self.run_button.on_click(lambda _button: self.submit())

    def values(self) -> dict[str, Any]:
        """Return the current values, typed like the defaults; raises ValueError if one is invalid."""
        return {n: _read(n, self.params[n], f) for n, f in self.fields.items()}

    def submit(self) -> Any:
        """Run ``on_run(values())`` as the Run button does; return its result (None on error)."""
        from IPython import get_ipython
        from IPython.display import display

        self.output.clear_output()
        self.run_button.disabled = True
        self.status.value = "Running…"
        self.last_result, self.last_error = None, None
        started = time.perf_counter()
        with self.output:
            try:
                values = self.values()
                result = self.on_run(values) if self.on_run is not None else values
                self.last_result = result
                if isinstance(result, str):
                    print(result)  # not its repr, quotes and escapes
                elif result is not None:
                    display(result)
            except Exception as exc:  # noqa: BLE001 - the user's pipeline: shown, kept, not raised
                self.last_error = exc
                ip = get_ipython()
                if ip is not None and getattr(ip, "kernel", None) is not None:
                    ip.showtraceback()  # inside this Output; a UsageError stays one line
                else:
                    self.output.append_stderr(f"{type(exc).__name__}: {exc}\n")
        self.run_button.disabled = False
        took = time.perf_counter() - started
        self.status.value = (
            f"<span style='color:#B34700'>✕ {escape(type(self.last_error).__name__)}</span>"
            if self.last_error
            else f"<span style='color:#007A59'>✓ done in {took:.1f} s</span>"
        )
        return self.last_result

    def to_text(self) -> str:
        """Return the form's parameters and current values as text."""
        values = {n: getattr(f, "value", None) for n, f in self.fields.items()}
        width = max([len(n) for n in values] + [4])
        lines = ["Intake form (run it in Jupyter to edit):"]
        lines += [f"  {n:<{width}} = {v!r}" for n, v in values.items()]
        return "\n".join(lines)

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict, dict] | dict:
        bundle = super()._repr_mimebundle_(**kwargs)
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle or {}, {})
        return {**data, "text/plain": self.to_text()}, metadata
