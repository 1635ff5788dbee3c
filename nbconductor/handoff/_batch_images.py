"""Image outputs of batch rows, written as files beside each row's output notebook.

A step's images reach the output notebook as ``image/png`` outputs tagged with the step's name
(``metadata.nbconductor.step``, by `nbconductor.notebook._display.image_bundle`): the run summary's
thumbnails and any image shown inline. `write_row_images` reads the notebook as JSON and writes
each step's latest images as ``<notebook stem>-<step>.png`` (``-<i>`` for each item of an
image map), e.g. ``newsletter-03-cover.png`` beside ``newsletter-03.ipynb``.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from .._summary import PNG_MAGIC


def notebook_images(path: str | Path) -> dict[tuple[str, int | None], bytes]:
    """``{(step, item index or None): png}`` of the tagged images in an output notebook (the
    last one shown per step and item). Untagged outputs, names that are not identifiers and
    data that is not a PNG are left out: the notebook is data, not instructions."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    images: dict[tuple[str, int | None], bytes] = {}
    for cell in nb.get("cells") or []:
        for out in cell.get("outputs") or [] if isinstance(cell, dict) else []:
            tag = (out.get("metadata") or {}).get("nbconductor") if isinstance(out, dict) else None
            data = (out.get("data") or {}).get("image/png") if isinstance(tag, dict) else None
            step, index = (tag or {}).get("step"), (tag or {}).get("index")
            if not (
                isinstance(step, str) and step.isidentifier() and isinstance(data, (str, list))
            ):
                continue
            if index is not None and not (isinstance(index, int) and 0 <= index < 10_000):
                continue
            try:
                png = base64.b64decode(
                    "".join(data) if isinstance(data, list) else data, validate=False
                )
            except (binascii.Error, ValueError):
                continue
            if png.startswith(PNG_MAGIC):
                images[(step, index)] = png
    return images


def write_row_images(notebook: str | Path) -> list[str]:
    """Write the images of a row's output ``notebook`` beside it; returns the files' paths."""
    path = Path(notebook)
    written = []
    for (step, index), png in sorted(
        notebook_images(path).items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)
    ):
        name = f"{path.stem}-{step}" + ("" if index is None else f"-{index}") + ".png"
        target = path.with_name(name)
        target.write_bytes(png)
        written.append(str(target))
    return written
