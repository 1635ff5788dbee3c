"""A graph snapshot as the renderers and widgets receive it (shared by the render and notebook tests)."""

from __future__ import annotations

import base64

import pytest

SVG_NS = "{http://www.w3.org/2000/svg}"


PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cf000001010100186dd8d60000000049454e44ae426082"
    )
).decode()


def node(nid: str, state: str = "pending", **extra) -> dict:
    base = {
        "id": nid, "label": nid, "kind": "llm", "state": state, "model": None,
        "attempts": None, "tokens": None, "cost": None, "latency": None, "items": None,
        "gates": [], "prompt": None, "output": None, "output_kind": "none", "image_b64": None,
        "error": None, "started": None, "ended": None, "attempt_spans": [],
    }  # fmt: skip
    return {**base, **extra}


@pytest.fixture
def snapshot() -> dict:
    t = 1732170000.0
    return {
        "nodes": [
            node("research", "passed", model="offline:fast", attempts=1, tokens=120, cost=0.001,
                 latency=1.2, output='[{"name": "Acme", "angle": "price"}]', output_kind="json",
                 started=t, ended=t + 1.2, attempt_spans=[[t, t + 1.2, "passed"]]),
            node("draft", "flagged", model="offline:writer", attempts=2, tokens=412, cost=0.0031,
                 latency=1.24, prompt="Write about <topic>",
                 output="# Issue 1\n\nHello **world** <script>alert(1)</script>",
                 output_kind="markdown",
                 gates=[{"name": "rubric", "passed": False, "score": 0.62, "feedback": "Too long"}],
                 started=t + 1.3, ended=t + 2.5,
                 attempt_spans=[[t + 1.3, t + 1.8, "failed"], [t + 1.9, t + 2.5, "flagged"]]),
            node("image", "failed", kind="image", error="RateLimitError: 429", attempts=3,
                 started=t + 1.3, ended=t + 2.0,
                 attempt_spans=[[t + 1.3, t + 1.5, "failed"], [t + 1.55, t + 1.7, "failed"],
                                [t + 1.75, t + 2.0, "failed"]]),
            node("translate", "running", model="offline:fast", items=12, attempts=1,
                 started=t + 2.6, attempt_spans=[[t + 2.6, None, "running"]]),
            node("cover", "cached", kind="image", output_kind="image", image_b64=PNG_1PX),
            node("stats", "pending", kind="python"),
            node("unused", "skipped", kind="python"),
        ],
        "edges": [["research", "draft"], ["research", "image"], ["draft", "translate"],
                  ["translate", "stats"], ["research", "stats"], ["image", "cover"]],
        "run": {"id": "r-42", "status": "running", "cost": 0.0041, "tokens": 532},
    }  # fmt: skip
