"""Image step outputs a user can see: thumbnails in the run summary, full size in
``%conductor show``, and files beside each batch row's output notebook."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import nbformat
import pytest
from IPython.utils.capture import capture_output
from notebook_shell import fresh_shell

from nbconductor import Pipeline
from nbconductor._summary import PNG_MAGIC
from nbconductor.handoff._batch_images import notebook_images, write_row_images
from nbconductor.handoff._export import export_pipeline


@pytest.fixture
def ip(tmp_path, monkeypatch):
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "NBCONDUCTOR_OFFLINE_LATENCY"):
        monkeypatch.delenv(var, raising=False)
    yield fresh_shell(tmp_path, monkeypatch)


def images_in(cap) -> list[tuple[bytes, dict]]:
    return [
        (base64.b64decode(o.data["image/png"]), o.metadata)
        for o in cap.outputs
        if "image/png" in o.data
    ]


def test_run_summary_has_a_thumbnail_per_image_step_and_show_has_full_size(ip):
    ip.run_cell('topic = "tea"')
    ip.run_cell_magic(
        "step", "cover --image --model offline:img --lazy", "A poster about {{ topic }}"
    )
    ip.run_cell_magic("step", "caption --model offline:w --lazy", "Caption for {{ topic }}")
    with capture_output() as cap:
        ip.run_line_magic("conductor", "run")
    shown = images_in(cap)
    assert len(shown) == 1
    png, metadata = shown[0]
    assert png.startswith(PNG_MAGIC) and png == bytes(ip.user_ns["cover"])
    assert metadata["image/png"]["width"] == 160 and metadata["nbconductor"] == {"step": "cover"}
    texts = [o.data.get("text/markdown", "") for o in cap.outputs]
    assert any("**cover**" in t and "%conductor show cover" in t for t in texts)
    summary = next(t for t in texts if t.startswith("| step"))
    assert "1 image (" in summary and "below" in summary

    with capture_output() as cap:
        ip.run_line_magic("conductor", "show cover")
    ((full, metadata),) = images_in(cap)
    assert full == png and "image/png" not in metadata  # full size: no width
    assert metadata["nbconductor"] == {"step": "cover"}


def make_image_job(folder: Path) -> Path:
    p = Pipeline(store=":memory:", namespace={"topic": "t"})
    p.step("draft", "Write about {{ topic }}", model="offline:w")
    p.step("hero", "An image for {{ topic }}", image=True, model="offline:img")
    return export_pipeline(p, folder / "job.ipynb")


def test_batch_writes_each_rows_images_beside_its_notebook(tmp_path, monkeypatch, capsys):
    from nbconductor.cli import main

    make_image_job(tmp_path)
    (tmp_path / "rows.json").write_text(json.dumps([{"topic": "tea"}, {"topic": "coffee"}]))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NBCONDUCTOR_STORE", raising=False)
    assert (
        main(["batch", "job.ipynb", "--params", "rows.json", "--workers", "1", "--out", "out"]) == 0
    )
    out = capsys.readouterr().out
    notebooks = sorted(p.stem for p in (tmp_path / "out").glob("job-*.ipynb"))
    files = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert len(notebooks) == 2 and files == [f"{n}-hero.png" for n in notebooks]  # row, step
    first, second = ((tmp_path / "out" / f).read_bytes() for f in files)
    assert first.startswith(PNG_MAGIC) and first != second  # each row's own image
    # the output notebook shows it too, and the summary table lists the file with its row
    nb = nbformat.read(tmp_path / "out" / f"{notebooks[0]}.ipynb", as_version=4)
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    for n in notebooks:
        assert f"{n}.ipynb + {n}-hero.png" in out


def test_images_are_read_from_a_notebook_as_data(tmp_path):
    png = PNG_MAGIC + b"rest"
    b64 = base64.b64encode(png).decode()

    def output(step, data=b64, index=None):
        tag = {"step": step} if index is None else {"step": step, "index": index}
        return {
            "output_type": "display_data",
            "data": {"image/png": data},
            "metadata": {"nbconductor": tag},
        }

    nb = {
        "cells": [
            {
                "cell_type": "code",
                "outputs": [
                    output("hero"),
                    output("../../etc/evil"),  # not a step name: no file anywhere else
                    output("fake", base64.b64encode(b"not a png").decode()),
                    output("items", index=1),
                    output("items", index=0),
                    {
                        "output_type": "display_data",
                        "data": {"image/png": b64},
                        "metadata": {},
                    },  # untagged
                ],
            }
        ]
    }
    path = tmp_path / "row-0.ipynb"
    path.write_text(json.dumps(nb))
    assert set(notebook_images(path)) == {("hero", None), ("items", 0), ("items", 1)}
    written = [Path(p).name for p in write_row_images(path)]
    assert written == ["row-0-hero.png", "row-0-items-0.png", "row-0-items-1.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*written, "row-0.ipynb"])
