"""The graph widget, its inspector and the intake form, live in JupyterLab."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

T = 1732170000.0
SNAPSHOT = {
    "nodes": [
        {"id": "research", "label": "research", "kind": "llm", "state": "cached",
         "model": "offline:fast", "attempts": 1, "tokens": 180, "cost": 0.0004, "latency": 0.8,
         "items": None, "gates": [], "prompt": "List five competitors writing about pricing.",
         "output": '[{"name": "Acme", "angle": "price anchoring"}]', "output_kind": "json",
         "image_b64": None, "error": None, "started": T, "ended": T + 0.8,
         "attempt_spans": [[T, T + 0.8, "cached"]]},
        {"id": "draft", "label": "draft", "kind": "llm", "state": "passed",
         "model": "offline:writer", "attempts": 2, "tokens": 412, "cost": 0.0031, "latency": 1.24,
         "items": None,
         "gates": [{"name": "rubric", "passed": True, "score": 0.86,
                    "feedback": "Warm and direct; ends with a next step."}],
         "prompt": "Write a newsletter issue about pricing pages.",
         "output": "# Pricing pages\n\nShort, **warm** and <b>escaped</b>.\n\n- one\n- two",
         "output_kind": "markdown", "image_b64": None, "error": None,
         "started": T + 0.9, "ended": T + 2.4,
         "attempt_spans": [[T + 0.9, T + 1.5, "failed"], [T + 1.6, T + 2.4, "passed"]]},
        {"id": "hero", "label": "hero image", "kind": "image", "state": "failed",
         "model": "openai:gpt-image-1", "attempts": 3, "tokens": None, "cost": None,
         "latency": None, "items": None, "gates": [], "prompt": "A calm pricing page",
         "output": None, "output_kind": "none", "image_b64": None,
         "error": "RateLimitError: 429 Too Many Requests", "started": T + 0.9, "ended": T + 2.0,
         "attempt_spans": [[T + 0.9, T + 1.2, "failed"], [T + 1.3, T + 1.6, "failed"],
                           [T + 1.7, T + 2.0, "failed"]]},
        {"id": "translate", "label": "translate", "kind": "llm", "state": "running",
         "model": "offline:fast", "attempts": 1, "tokens": None, "cost": None, "latency": None,
         "items": 3, "gates": [], "prompt": None, "output": None, "output_kind": "none",
         "image_b64": None, "error": None, "started": T + 2.5, "ended": None,
         "attempt_spans": [[T + 2.5, None, "running"]]},
        {"id": "review", "label": "review", "kind": "llm", "state": "flagged",
         "model": "offline:judge", "attempts": 1, "tokens": 96, "cost": 0.0002, "latency": 0.4,
         "items": None,
         "gates": [{"name": "max_words(400)", "passed": False, "score": None,
                    "feedback": "512 words"}],
         "prompt": None, "output": "Too long for the newsletter.", "output_kind": "text",
         "image_b64": None, "error": None, "started": T + 2.4, "ended": T + 2.8,
         "attempt_spans": [[T + 2.4, T + 2.8, "flagged"]]},
        {"id": "stats", "label": "stats", "kind": "python", "state": "pending", "model": None,
         "attempts": None, "tokens": None, "cost": None, "latency": None, "items": None,
         "gates": [], "prompt": None, "output": None, "output_kind": "none", "image_b64": None,
         "error": None, "started": None, "ended": None, "attempt_spans": []},
        {"id": "publish", "label": "publish", "kind": "python", "state": "skipped",
         "model": None, "attempts": None, "tokens": None, "cost": None, "latency": None,
         "items": None, "gates": [], "prompt": None, "output": None, "output_kind": "none",
         "image_b64": None, "error": None, "started": None, "ended": None, "attempt_spans": []},
    ],
    "edges": [["research", "draft"], ["research", "hero"], ["draft", "translate"],
              ["draft", "review"], ["translate", "stats"], ["research", "stats"],
              ["hero", "publish"], ["review", "publish"]],
    "run": {"id": "r-demo", "status": "running", "cost": 0.0037, "tokens": 688},
}  # fmt: skip

GRAPH_CELLS = [
    "from nbconductor.notebook.widgets import GraphWidget, TimelineView",
    f"snapshot = {SNAPSHOT!r}\ngraph = GraphWidget(snapshot)\ngraph.show();",
    "TimelineView(snapshot)",
]

FORM_PARAMS = {
    "topic": "AI orchestration",
    "words": 400,
    "markets": ["fr", "de"],
    "draft_only": False,
}
FORM_CELLS = [
    "from nbconductor.notebook.widgets import IntakeForm\n"
    "def on_run(params):\n"
    "    print('RAN WITH', sorted(params.items()))\n"
    "    return 'brief accepted: ' + params['topic']\n"
    f"form = IntakeForm({FORM_PARAMS!r}, on_run=on_run)\n"
    "form",
]


def test_graph_shows_states_and_inspector(lab):
    from playwright.sync_api import expect

    lab.write_notebook("graph.ipynb", GRAPH_CELLS)
    lab.open("graph.ipynb")
    lab.run_all()
    assert lab.error_outputs() == []

    graph = lab.page.locator(".nbc-graph")
    expect(graph).to_have_count(1)
    for node in SNAPSHOT["nodes"]:
        box = graph.locator(f'.nbc-node[data-node="{node["id"]}"]')
        expect(box).to_have_attribute("data-state", node["state"])
    expect(graph.locator('[data-node="translate"]')).to_contain_text("×3")
    expect(graph.locator('[data-node="draft"]')).to_contain_text("offline:writer")
    expect(graph.locator(".nbc-edge")).to_have_count(len(SNAPSHOT["edges"]))
    expect(graph.locator(".nbc-legend-item")).to_have_count(7)
    expect(graph.locator(".nbc-run")).to_contain_text("run r-demo · running")

    # click a node: Python fills `detail`, the inspector shows it
    graph.locator('.nbc-node[data-node="draft"]').click()
    inspector = graph.locator('.nbc-inspector[data-node="draft"]')
    expect(inspector).to_be_visible()
    expect(inspector.locator(".nbc-md h1")).to_have_text("Pricing pages")
    expect(inspector.locator(".nbc-md strong")).to_have_text("warm")
    expect(inspector.locator(".nbc-md")).to_contain_text("<b>escaped</b>")  # shown, not parsed
    expect(inspector.locator(".nbc-facts")).to_contain_text("$0.0031")
    expect(inspector.locator(".nbc-gates")).to_contain_text("rubric 0.86")
    expect(graph.locator('.nbc-node[data-node="draft"]')).to_have_attribute("aria-pressed", "true")
    lab.screenshot("graph-inspector-draft", graph)

    graph.locator('.nbc-node[data-node="hero"]').click()
    expect(graph.locator('.nbc-inspector[data-node="hero"] .nbc-error')).to_contain_text("429")
    graph.locator('.nbc-node[data-node="research"]').click()
    expect(graph.locator('.nbc-inspector[data-node="research"] pre').first).to_contain_text(
        '"name": "Acme"'
    )

    # live update from Python: only states change, the view follows
    index = lab.append_cell(
        "snapshot['nodes'][3]['state'] = 'passed'\n"
        "snapshot['run']['status'] = 'done'\n"
        "graph.update(snapshot)"
    )
    lab.run_cell(index)
    assert lab.error_outputs() == []
    expect(graph.locator('.nbc-node[data-node="translate"]')).to_have_attribute(
        "data-state", "passed"
    )
    expect(graph.locator(".nbc-run")).to_contain_text("done")
    expect(graph).to_have_count(1)
    expect(graph.locator('.nbc-inspector[data-node="research"]')).to_be_visible()
    lab.screenshot("graph-page")

    # the saved notebook keeps the widget view plus static fallbacks of the final state
    data = lab.save().cells[1].outputs[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" in data
    assert 'data-node="translate" data-state="passed"' in data["image/svg+xml"]
    assert data["text/plain"].startswith("run r-demo · done")


def test_form_run_button_calls_back(lab):
    from playwright.sync_api import expect

    lab.write_notebook("form.ipynb", FORM_CELLS)
    lab.open("form.ipynb")
    lab.run_all()
    assert lab.error_outputs() == []

    form = lab.page.locator(".nbc-form")
    expect(form).to_be_visible()
    topic = form.locator("input[type=text]").first
    topic.fill("Pricing pages")
    topic.press("Tab")  # commit the value to the model
    words = form.locator("input[type=number]").first
    words.fill("250")
    words.press("Tab")
    form.get_by_role("button", name="Run").click()
    expect(form).to_contain_text(
        "RAN WITH [('draft_only', False), ('markets', ['fr', 'de']), "
        "('topic', 'Pricing pages'), ('words', 250)]"
    )
    expect(form).to_contain_text("brief accepted: Pricing pages")
    expect(form).to_contain_text("done in")
    lab.screenshot("intake-form", form)
