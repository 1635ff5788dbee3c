"""notebooks/quickstart.ipynb, run in a real JupyterLab (and Notebook 7) and looked at.

The notebook gets a few cells appended — a step that is flagged for review, a second graph,
the review queue, the intake form — then runs top to bottom in the browser. What the page
shows is compared with a Python-side run of the same cells (the offline provider is
deterministic), and the review queue's Approve and the form's Run are clicked.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
pytestmark = pytest.mark.browser

QUICKSTART = REPO / "notebooks" / "quickstart.ipynb"
EXTRA_CELLS = [
    '%%step tagline --check "max_words(3)" --retries 0 --on-fail review\n'
    "Write a one-line tagline about {{ topic }}.",
    "%conductor graph",
    "%conductor review",
    # slower offline answers, so the form's run shows parallel bars in the timeline
    "%env NBCONDUCTOR_OFFLINE_LATENCY=0.2",
    "%conductor form",
]
NEW_TOPIC = "Pricing pages for bakeries"

# Runs a notebook's code cells in an InteractiveShell and prints, for every `%conductor graph`
# cell, each node's state and item count: what the browser must show.
EXPECT = r"""
import json, sys
import nbformat
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

shell = InteractiveShell.instance()
graphs = []
for cell in nbformat.read(sys.argv[1], as_version=4).cells:
    if cell.cell_type != "code":
        continue
    with capture_output():
        result = shell.run_cell(cell.source, store_history=True)
    if not result.success:
        raise SystemExit(f"cell failed: {cell.source[:60]!r}: {result.error_in_exec or result.error_before_exec}")
    if cell.source.strip() == "%conductor graph":
        graphs.append({n["id"]: [n["state"], n["items"]] for n in result.result.nodes})
p = shell.user_ns["__nbconductor__"].pipeline
print(json.dumps({"graphs": graphs, "draft": p.results["draft"].output}))
"""


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in (
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "ANTHROPIC_BASE_URL",
        "OPENAI_BASE_URL",
        "NBCONDUCTOR_STORE",
        "NBCONDUCTOR_OFFLINE_LATENCY",
    ):
        env.pop(var, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return env


def with_extra_cells(source: Path, target: Path) -> Path:
    nb = nbformat.read(source, as_version=4)
    nb.cells += [nbformat.v4.new_code_cell(c) for c in EXTRA_CELLS]
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    return target


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> dict:
    """What a Python-side run of the extended quickstart gives (its own directory and store)."""
    path = with_extra_cells(QUICKSTART, tmp_path_factory.mktemp("expected") / "quickstart.ipynb")
    env = {**_kernel_env(), "JPY_SESSION_NAME": str(path)}
    proc = subprocess.run(
        [sys.executable, "-c", EXPECT, str(path)],
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def code_index(nb: nbformat.NotebookNode, source: str, nth: int = 0) -> int:
    """The index (among all cells, as the page counts them) of the nth cell with ``source``."""
    hits = [
        i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip() == source
    ]
    return hits[nth]


def graph_states(graph) -> dict[str, list]:
    """Each drawn node's state and item count (from its ×N badge), read from the page."""
    return graph.evaluate(
        """(el) => Object.fromEntries(Array.from(el.querySelectorAll('.nbc-node')).map((n) => {
            const badge = n.querySelector('.nbc-badge-text');
            const items = badge ? parseInt(badge.textContent.replace('×', ''), 10) : null;
            return [n.dataset.node, [n.dataset.state, items]];
        }))"""
    )


def store_rows(path: Path, step: str) -> list[dict]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [
            dict(r)
            for r in db.execute(
                "SELECT id, state, cached FROM results WHERE step=? AND item IS NULL ORDER BY id",
                (step,),
            )
        ]


def test_quickstart_in_jupyterlab(lab, expected):
    from playwright.sync_api import expect

    # room for whole widgets in the screenshots
    lab.page.set_viewport_size({"width": 1280, "height": 1800})
    path = with_extra_cells(QUICKSTART, lab.root_dir / "lab" / "quickstart.ipynb")
    nb = nbformat.read(path, as_version=4)
    lab.open("lab/quickstart.ipynb")
    lab.run_all()
    assert lab.error_outputs() == []

    # -- the graph: the nodes and states the Python-side run gives, ×3 on the map step
    first = lab.output(code_index(nb, "%conductor graph")).locator(".nbc-graph")
    expect(first.locator(".nbc-node")).to_have_count(4)
    assert set(expected["graphs"][0]) == {"research", "draft", "translate", "stats"}
    assert graph_states(first) == expected["graphs"][0]
    expect(first.locator('.nbc-node[data-node="translate"]')).to_contain_text("×3")
    expect(first.locator(".nbc-edge")).to_have_count(4)
    # the live graph of `%conductor run` ended in the same states
    live = lab.output(code_index(nb, "%conductor run")).locator(".nbc-graph")
    assert graph_states(live) == expected["graphs"][0]
    expect(live.locator(".nbc-run")).to_contain_text("· passed")
    lab.screenshot("quickstart-run", lab.cell(code_index(nb, "%conductor run")))

    # -- click a node: the inspector shows its output, model and prompt
    first.locator('.nbc-node[data-node="draft"]').click()
    inspector = first.locator('.nbc-inspector[data-node="draft"]')
    expect(inspector).to_be_visible()
    text = inspector.locator(".nbc-output .nbc-md").inner_text()
    assert text.startswith(
        "[offline:writer] Write a newsletter issue about AI orchestration for small teams"
    )
    assert text.split()[:6] == expected["draft"].split()[:6]
    expect(inspector.locator(".nbc-facts")).to_contain_text("offline:writer")
    expect(inspector.locator(".nbc-gates")).to_contain_text("rubric")
    lab.screenshot("quickstart-graph-inspector", lab.cell(code_index(nb, "%conductor graph")))

    # the second graph has the flagged step
    second = lab.output(code_index(nb, "%conductor graph", 1)).locator(".nbc-graph")
    assert graph_states(second) == expected["graphs"][1]
    assert expected["graphs"][1]["tagline"][0] == "flagged"

    # -- the review queue: approve the flagged tagline
    store = lab.root_dir / "lab" / ".nbconductor" / "store.sqlite"
    flagged = [r for r in store_rows(store, "tagline") if r["state"] == "flagged"]
    assert len(flagged) == 1
    review = lab.output(code_index(nb, "%conductor review"))
    card = review.locator(".widget-vbox", has_text=f"tagline · result #{flagged[0]['id']}").last
    expect(card).to_contain_text("max_words(3)")
    lab.screenshot("quickstart-review-before", review)
    card.locator("button[title='Approve']").click()
    expect(card).to_contain_text("approved by")
    expect(card.locator("button[title='Approve']")).to_be_disabled()
    expect(review).to_contain_text("0 of 1 flagged outputs waiting")
    assert [r["state"] for r in store_rows(store, "tagline") if r["id"] == flagged[0]["id"]] == [
        "approved"
    ]
    lab.screenshot("quickstart-review-approved", review)

    # -- the form: a new topic, Run, and the pipeline runs with it
    form = lab.output(code_index(nb, "%conductor form")).locator(".nbc-form")
    topic = form.locator("input[type=text]").first
    expect(topic).to_have_value("AI orchestration for small teams")
    topic.fill(NEW_TOPIC)
    topic.press("Tab")  # commits the value to the kernel's model
    form.get_by_role("button", name="Run").click()
    expect(form).to_contain_text("done in", timeout=60_000)
    form_graph = form.locator(".nbc-graph")
    # the new tagline is flagged again
    expect(form_graph.locator(".nbc-run")).to_contain_text("flagged")
    form_graph.locator('.nbc-node[data-node="draft"]').click()
    expect(form_graph.locator(".nbc-inspector .nbc-md")).to_contain_text(
        f"[offline:writer] Write a newsletter issue about {NEW_TOPIC}"
    )
    lab.screenshot("quickstart-form-run", form)

    check = lab.append_cell("print(topic)\nprint(draft[:80])")
    lab.run_cell(check)
    expect(lab.output(check)).to_contain_text(f"Write a newsletter issue about {NEW_TOPIC}")

    # -- the timeline of that run: one row of bars per step, translations side by side
    timeline = lab.append_cell("%conductor timeline")
    lab.run_cell(timeline)
    assert lab.error_outputs() == []
    image = lab.output(timeline).locator("img")
    expect(image).to_be_visible()
    assert image.evaluate("(img) => img.naturalWidth") > 600
    lab.screenshot("quickstart-timeline", lab.output(timeline))

    saved = lab.save()
    svg = saved.cells[timeline].outputs[0]["data"]["image/svg+xml"]
    for name in ("research", "draft", "translate", "stats", "tagline"):
        assert f'class="nbc-attempt" data-node="{name}"' in svg, name
    # the three translations ran side by side: their bars overlap
    bars = [
        (float(x), float(x) + float(w))
        for x, w in re.findall(
            r'class="nbc-attempt" data-node="translate"[^>]* x="([\d.]+)"[^>]* width="([\d.]+)"',
            svg,
        )
    ]
    assert len(bars) == 3
    assert max(a for a, _ in bars) < min(b for _, b in bars)
    assert int(re.search(r"peak (\d+) in parallel", svg)[1]) >= 2  # tagline beside research
    lab.screenshot("quickstart-page")


def test_quickstart_graph_in_notebook7(lab, expected):
    from playwright.sync_api import expect

    lab.copy_in(QUICKSTART, "nb7/quickstart.ipynb")
    nb = nbformat.read(QUICKSTART, as_version=4)
    lab.open("nb7/quickstart.ipynb", ui="notebook")
    lab.run_all()
    assert lab.error_outputs() == []
    graph = lab.output(code_index(nb, "%conductor graph")).locator(".nbc-graph")
    expect(graph.locator(".nbc-node")).to_have_count(4)
    assert graph_states(graph) == expected["graphs"][0]
    graph.locator('.nbc-node[data-node="stats"]').click()
    expect(graph.locator('.nbc-inspector[data-node="stats"] pre')).to_contain_text('"languages": 3')
    lab.screenshot("notebook7-graph", lab.cell(code_index(nb, "%conductor graph")))
    assert (ARTIFACTS / "notebook7-graph.png").stat().st_size > 10_000
