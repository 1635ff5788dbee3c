"""Jobs several test folders run: exported notebooks built with the Python API."""

from __future__ import annotations

from pathlib import Path

from nbconductor import Pipeline
from nbconductor.handoff._export import export_pipeline


def make_job(folder: Path) -> Path:
    p = Pipeline(store=":memory:", namespace={"topic": "t", "divisor": 1})
    p.step("draft", "Write about {{ topic }}", model="offline:w")
    p.step("ratio", "len(draft) // divisor", python=True)
    p.step(
        "tagline",
        "One line on {{ topic }}",
        model="offline:t",
        checks=["max_words(1)"],
        retries=0,
        on_fail="review",
    )
    return export_pipeline(p, folder / "job.ipynb")
