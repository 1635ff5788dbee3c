"""The compare widget in a real JupyterLab: a small compare against the loopback fake, a grid
cell clicked open, preferences picked, the people's figures redrawn.

The kernel's Anthropic SDK talks to the fake API this test process serves (its address set in
the notebook's first cell). The rubric judge gives ``concise`` 0.9 and base 0.7 on every brief;
the pairwise judge prefers ``concise``.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from fakeapi import JSONText, Text

pytestmark = pytest.mark.browser

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


def cells(base_url: str) -> list[str]:
    return [
        "import os\n"
        f"os.environ['ANTHROPIC_BASE_URL'] = {base_url!r}\n"
        "os.environ['ANTHROPIC_API_KEY'] = 'loopback'\n"
        "os.environ['NBCONDUCTOR_USER'] = 'ana'",
        "%load_ext nbconductor",
        "topic = 'default'",
        f"%%step draft --model {WRITER} --lazy\nDraft on {{{{ topic }}}}",
        f"%%rubric draft --judge {JUDGE} --threshold 0.5 --retries 0\n- says something true",
        "%%variant draft concise\nCONCISE draft on {{ topic }}",
        f"%conductor compare draft --data briefs.json --pairwise {JUDGE}",
    ]


def test_compare_widget_expands_a_cell_and_records_picks(lab, fake_api):
    from playwright.sync_api import expect

    fake_api.set_default(reply, endpoint="anthropic")
    lab.page.set_viewport_size({"width": 1440, "height": 1400})
    folder = lab.root_dir / "compare"
    folder.mkdir(exist_ok=True)
    (folder / "briefs.json").write_text(json.dumps(ROWS))
    lab.write_notebook("compare/compare.ipynb", cells(fake_api.anthropic_base_url))
    lab.open("compare/compare.ipynb")
    lab.run_all()
    assert lab.error_outputs() == []
    starts = ("Draft on", "CONCISE draft on")
    drafts = [r for r in fake_api.requests if r.json["messages"][0]["content"].startswith(starts)]
    assert len(drafts) == 12  # 6 briefs × 2 variants, through the fake

    widget = lab.page.locator(".nbc-cmp")
    expect(widget).to_have_count(1)
    expect(widget.locator(".nbc-cmp-title")).to_contain_text("compare draft: 6 rows × 2 variants")
    # the best mean score is marked (the yields tie at 100%: nothing to mark there)
    figures = widget.locator(".nbc-cmp-figures")
    expect(figures.locator("tr[data-variant=concise] td:nth-child(5)")).to_have_class(
        "nbc-cmp-best"
    )
    expect(figures.locator("tr[data-variant=base] td:nth-child(5)")).not_to_have_class(
        "nbc-cmp-best"
    )
    expect(figures.locator("tr td:nth-child(3).nbc-cmp-best")).to_have_count(0)
    expect(widget.locator(".nbc-cmp-verdicts")).to_contain_text(
        "concise beats base on 6 of 6 briefs, p = 0.03, sign test"
    )
    expect(widget.locator(".nbc-cmp-row")).to_have_count(6)
    expect(widget.locator(".nbc-cmp-win")).to_have_count(6)
    expect(widget.locator(".nbc-cmp-people")).to_have_count(0)  # nobody has picked yet

    # click a grid cell: Python sends that cell in full, the row below shows it
    cell = widget.locator('.nbc-cmp-row[data-row="2"] .nbc-cmp-cell[data-variant="concise"]')
    expect(cell).to_have_class("nbc-cmp-cell nbc-cmp-win")
    cell.click()
    detail = widget.locator('.nbc-cmp-detail[data-row="2"][data-variant="concise"]')
    expect(detail).to_be_visible()
    expect(detail.locator(".nbc-cmp-output")).to_contain_text("CONCISE draft on topic2")
    expect(detail.locator(".nbc-cmp-gates")).to_contain_text("✓ rubric 0.90")
    expect(detail).to_contain_text("score 0.90")
    expect(cell).to_have_attribute("aria-expanded", "true")
    lab.screenshot("compare-widget-cell-open", widget)

    # pick on two rows: recorded in the store, the people's figures change without a re-run
    sent = len(fake_api.requests)
    widget.locator('.nbc-cmp-row[data-row="0"] button[data-choice="concise"]').click()
    people = widget.locator(".nbc-cmp-people")
    expect(people).to_contain_text("1 decided): 1 wins, 0 losses, 0 ties, 0 both bad")
    expect(people).to_contain_text("win rate 100%")
    expect(widget.locator(".nbc-cmp-status")).to_contain_text("brief 0: recorded concise")
    expect(widget.locator('.nbc-cmp-row[data-row="0"] .nbc-cmp-picked')).to_have_text(
        "concise vs base: concise"
    )
    expect(widget.locator('.nbc-cmp-row[data-row="0"] button')).to_have_count(0)
    widget.locator('.nbc-cmp-row[data-row="1"] button[data-choice="base"]').click()
    expect(people).to_contain_text("2 decided): 1 wins, 1 losses, 0 ties, 0 both bad")
    expect(people).to_contain_text("win rate 50%; agree with the pairwise judge on 50%")
    expect(detail).to_be_visible()  # the open cell stays open through the redraw
    lab.screenshot("compare-widget-picked", widget)
    assert len(fake_api.requests) == sent  # nothing ran again

    store = folder / ".nbconductor" / "store.sqlite"
    with sqlite3.connect(store) as db:
        picks = db.execute(
            "SELECT row_index, variant, vs, choice, reviewer FROM experiment_prefs ORDER BY row_index"
        ).fetchall()
    assert picks == [
        (0, "concise", "base", "concise", "ana"),
        (1, "concise", "base", "base", "ana"),
    ]

    # the saved notebook keeps the static fallback for nbviewer and papermill outputs
    saved = lab.save().cells[-1].outputs
    bundle = next(
        o["data"] for o in saved if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    )
    assert 'class="nbc-compare"' in bundle["text/html"]


def test_with_three_variants_a_pick_chooses_which_variant_it_is_about(lab, fake_api):
    from playwright.sync_api import expect

    fake_api.set_default(reply, endpoint="anthropic")
    folder = lab.root_dir / "compare3"
    folder.mkdir(exist_ok=True)
    (folder / "briefs.json").write_text(json.dumps(ROWS[:3]))
    source = cells(fake_api.anthropic_base_url)
    source.insert(-1, "%%variant draft warm\nWARM draft on {{ topic }}")
    lab.write_notebook("compare3/compare.ipynb", source)
    lab.open("compare3/compare.ipynb")
    lab.run_all()
    assert lab.error_outputs() == []

    widget = lab.page.locator(".nbc-cmp")
    expect(widget.locator(".nbc-cmp-title")).to_contain_text("3 rows × 3 variants")
    expect(widget.locator(".nbc-cmp-verdicts")).to_contain_text("too few rows to tell")
    row = widget.locator('.nbc-cmp-row[data-row="0"]')
    menu = row.locator(".nbc-cmp-pick select")
    expect(menu.locator("option")).to_have_text(["concise", "warm"])
    menu.select_option("warm")
    expect(row.locator("button").first).to_have_text("warm")
    row.locator('button[data-choice="tie"]').click()
    expect(widget.locator(".nbc-cmp-status")).to_contain_text("brief 0: recorded tie (warm vs")
    expect(row.locator(".nbc-cmp-picked")).to_have_text(["warm vs base: tie"])
    expect(row.locator(".nbc-cmp-pick select")).to_have_count(0)  # one variant left to pick
    row.locator('button[data-choice="both bad"]').click()
    expect(row.locator(".nbc-cmp-picked")).to_have_count(2)
    expect(row.locator("button")).to_have_count(0)
    people = widget.locator(".nbc-cmp-people")
    expect(people.and_(lab.page.locator("[data-variant=warm]"))).to_contain_text(
        "1 decided): 0 wins, 0 losses, 1 ties, 0 both bad"
    )
    expect(people.and_(lab.page.locator("[data-variant=concise]"))).to_contain_text(
        "1 decided): 0 wins, 0 losses, 0 ties, 1 both bad"
    )
    lab.screenshot("compare-widget-three-variants", widget)
    with sqlite3.connect(folder / ".nbconductor" / "store.sqlite") as db:
        picks = db.execute("SELECT row_index, variant, choice FROM experiment_prefs ORDER BY at")
        assert picks.fetchall() == [(0, "warm", "tie"), (0, "concise", "both bad")]
