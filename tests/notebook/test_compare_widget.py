"""The compare widget behind ``%conductor compare``, driven from Python the way its clicks and
picks drive it (the browser test, tests/browser/test_compare_widget.py, clicks the real page).

The real Anthropic SDK against the loopback fake: the rubric judge gives ``concise`` 0.9 and
base 0.7 on every brief; the pairwise judge picks ``concise``.
"""

from __future__ import annotations

import json

import anthropic  # noqa: F401 - the test extras install the SDK
import pytest
from fakeapi import JSONText, Text
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from notebook_shell import fresh_shell

from nbconductor._errors import OptionError
from nbconductor.notebook.widgets.compare import CompareWidget
from nbconductor.store._experiments import experiment_prefs

WRITER = "anthropic:claude-haiku-4-5"
JUDGE = "anthropic:claude-opus-4-8"
ROWS = [{"topic": f"topic{i}"} for i in range(6)]


def reply(body):
    text = json.dumps(body["messages"])
    if "<output_a>" in text:
        a = text.split("<output_a>")[1].split("</output_a>")[0]
        better = "A" if "CONCISE" in a else "B"
        return JSONText({"better": better, "reason": "shorter"}, input_tokens=50, output_tokens=5)
    if "<rubric>" in text:
        output = text.split("<output>")[1].split("</output>")[0]
        score = 0.9 if "CONCISE" in output else 0.7
        return JSONText({"score": score, "feedback": "ok", "suggested_edit": ""})
    prompt = body["messages"][0]["content"]
    return Text(f"[{body['model']}] {prompt}", input_tokens=10, output_tokens=5)


@pytest.fixture
def shell(fake_api, tmp_path, monkeypatch):
    fake_api.set_default(reply, endpoint="anthropic")
    monkeypatch.setenv("NBCONDUCTOR_USER", "ana")
    ip = fresh_shell(tmp_path, monkeypatch)
    (tmp_path / "briefs.json").write_text(json.dumps(ROWS))
    ip.run_cell("topic = 'default'")
    ip.run_cell_magic("step", f"draft --model {WRITER} --lazy", "Draft on {{ topic }}")
    ip.run_cell_magic("rubric", f"draft --judge {JUDGE} --threshold 0.5 --retries 0", "- true")
    ip.run_cell_magic("variant", "draft concise", "CONCISE draft on {{ topic }}")
    return ip


def shown_widget(ip, line: str) -> tuple[CompareWidget, dict]:
    with capture_output() as shown:
        ip.run_line_magic("conductor", line)
    bundles = [
        o.data for o in shown.outputs if "application/vnd.jupyter.widget-view+json" in o.data
    ]
    assert len(bundles) == 1
    widget = ip.user_ns["_compare_widget"]  # the widget shown, as the kernel keeps it
    assert bundles[0]["application/vnd.jupyter.widget-view+json"]["model_id"] == widget.model_id
    return widget, bundles[0]


def test_the_widget_shows_figures_verdicts_and_a_grid_with_a_static_fallback(shell):
    widget, bundle = shown_widget(shell, "compare draft --data briefs.json")
    assert isinstance(widget, CompareWidget) and widget.comparison is shell.user_ns["_compare"]
    # papermill outputs and nbviewer get the static HTML and the text table
    assert 'class="nbc-compare"' in bundle["text/html"] and "<details>" in bundle["text/html"]
    assert bundle["text/plain"].startswith("compare draft: 6 rows × 2 variants")
    view = widget.view
    table = {r["variant"]: r["cells"] for r in view["table"]}
    score_col = view["header"].index("mean score (95% CI)") - 1
    assert table["concise"][score_col] == {"text": "0.90 [0.90, 0.90]", "best": True}
    assert table["base"][score_col]["best"] is False
    assert view["verdicts"][0]["lines"] == [
        "concise beats base on 6 of 6 briefs, p = 0.03, sign test"
    ]
    assert [r["winner"] for r in view["grid"]] == ["concise"] * 6
    assert view["grid"][2]["cells"]["base"]["score"] == "0.70"
    assert view["grid"][2]["cells"]["concise"]["gates"] == "✓rubric"
    assert view["pickable"] is False  # no pairwise judge, no people's preferences
    assert "CONCISE draft on topic2" not in json.dumps(view)  # outputs stay in Python...
    widget.select(2, "concise")  # ...until a cell is clicked
    d = widget.detail
    assert (d["row"], d["variant"], d["score"]) == (2, "concise", "0.90")
    assert "CONCISE draft on topic2" in d["output"]
    assert d["gates"] == [{"name": "rubric", "passed": True, "score": "0.90"}]
    widget.selected = "nonsense"
    assert widget.detail == {}
    with pytest.raises(OptionError, match="no pairwise judge or review"):
        widget.prefer(0, "concise", "concise")


def test_a_pick_records_a_preference_and_redraws_the_verdicts(shell):
    widget, _ = shown_widget(shell, f"compare draft --data briefs.json --pairwise {JUDGE}")
    c = widget.comparison
    assert widget.view["pickable"] is True
    lines = widget.view["verdicts"][0]["lines"]
    assert len(lines) == 2 and lines[1].startswith("pairwise")  # no people yet
    assert widget.prefer(0, "concise", "concise") == "concise"
    assert widget.prefer(1, "concise", "base") == "base"
    widget._on_msg(widget, {"kind": "prefer", "row": 2, "variant": "concise", "choice": "tie"}, [])
    assert widget.status == "brief 2: recorded tie (concise vs base, by ana)"
    prefs = experiment_prefs(shell.user_ns["__nbconductor__"].pipeline.store, c.experiment_id)
    assert [(p["row_index"], p["choice"], p["reviewer"]) for p in prefs] == [
        (0, "concise", "ana"),
        (1, "base", "ana"),
        (2, "tie", "ana"),
    ]
    human = widget.view["verdicts"][0]["human"]
    assert (human["wins"], human["losses"], human["ties"], human["decided"]) == (1, 1, 1, 3)
    assert human["agreement_with_judge"] == round(1 / 3, 4)
    assert widget.view["verdicts"][0]["lines"][2].startswith(
        "people (3 decided): 1 wins, 1 losses, 1 ties, 0 both bad"
    )
    assert widget.view["grid"][1]["picks"] == {"concise": "base"}
    # decided once; bad picks are one line in `status`, nothing recorded
    for msg, message in [
        ({"row": 0, "variant": "concise", "choice": "base"}, "is decided"),
        ({"row": 9, "variant": "concise", "choice": "tie"}, "no brief 9"),
        ({"row": 3, "variant": "base", "choice": "tie"}, "compares one of concise with base"),
        ({"row": 3, "variant": "concise", "choice": "maybe"}, "got 'maybe'"),
        ({"row": "x", "variant": "concise", "choice": "tie"}, "invalid literal"),
    ]:
        widget._on_msg(widget, {"kind": "prefer", **msg}, [])
        assert message in widget.status
    assert len(experiment_prefs(widget.store, c.experiment_id)) == 3


def test_the_compare_magic_still_refuses_bad_input(shell):
    with pytest.raises(UsageError, match="--repeats must be 1 or more"):
        shell.run_line_magic("conductor", "compare draft --data briefs.json --repeats 0")
