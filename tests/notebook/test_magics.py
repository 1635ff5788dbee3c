import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from notebook_shell import fresh_shell

from nbconductor.store._sqlite import Store


@pytest.fixture
def ip(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    shell = fresh_shell(tmp_path, monkeypatch)
    shell.run_cell('topic = "pricing pages"\nmarkets = ["fr", "de"]')
    yield shell


def cell(ip, line, body):
    with capture_output() as cap:
        ip.run_cell_magic("step", line, body)
    return cap


def test_steps_bind_typed_outputs(ip):
    cell(
        ip,
        "research --json",
        'List five competitors on {{ topic }} as JSON: [{"name": ..., "angle": ...}]',
    )
    cell(ip, "draft --model writer", "Write about {{ topic }} avoiding {{ research }}")
    cell(ip, 'translate --map "lang in markets"', "Translate into {{ lang }}: {{ draft }}")
    cap = cell(ip, "stats --python", '{"words": len(draft.split()), "languages": len(translate)}')
    ns = ip.user_ns
    assert (
        isinstance(ns["research"], list)
        and len(ns["research"]) == 5
        and set(ns["research"][0]) == {"name", "angle"}
    )
    assert isinstance(ns["draft"], str) and ns["draft"].startswith(
        "[offline:writer] Write about pricing pages"
    )
    assert [t[:38] for t in ns["translate"]] == [
        f"[offline:default] Translate into {m}: [" for m in ("fr", "de")
    ]
    assert ns["stats"] == {"words": len(ns["draft"].split()), "languages": 2}
    # the output is shown inline with a footer line
    texts = [o.data.get("text/plain", "") for o in cap.outputs]
    assert any("✓ stats · passed" in t for t in texts)


def test_when_false_binds_none_and_lazy_does_not_run(ip):
    cell(ip, "maybe --when \"topic == 'other'\"", "Only for other")
    assert ip.user_ns["maybe"] is None
    cell(ip, "later --lazy", "Not yet {{ topic }}")
    assert "later" not in ip.user_ns
    with capture_output():
        ip.run_line_magic("conductor", "run later")
    assert ip.user_ns["later"].startswith("[offline:default] Not yet pricing pages")


def test_step_help_documents_every_option(ip):
    doc = ip.find_cell_magic("step").__doc__
    for option in [
        "--model",
        "--fallback",
        "--context",
        "--system",
        "--after",
        "--json",
        "--schema",
        "--python",
        "--image",
        "--map",
        "--when",
        "--temperature",
        "--max-tokens",
        "--retries",
        "--check",
        "--on-fail",
        "--tools",
        "--max-turns",
        "--lazy",
        "--no-cache",
    ]:
        assert option in doc


@pytest.mark.parametrize(
    "line, body, message",
    [
        ("b", "{{ topc }}", "step `b` refers to unknown name `topc`: did you mean `topic`?"),
        ("b --bogus", "x", "unrecognized arguments: --bogus"),
        ("", "x", "%%step needs a step name"),
        ('b --map "x of y"', "x", '--map must look like "VAR in EXPR"'),
        ("b", "{{ topic ", "step `b`: template syntax error on line 1"),
        ("b -m nope:x", "x", "unknown provider `nope` in model `nope:x`"),
        ("b -m fastt", "x", "unknown model `fastt`"),
        ("b --python", "x = (", "step `b`: Python syntax error on line 1"),
    ],
)
def test_bad_input_is_a_one_line_usage_error(ip, line, body, message):
    with pytest.raises(UsageError) as err:
        ip.run_cell_magic("step", line, body)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_cycle_is_reported_and_not_registered(ip):
    cell(ip, "a --lazy", "{{ b }}")
    with pytest.raises(UsageError, match="cycle: (a → b → a|b → a → b)"):
        ip.run_cell_magic("step", "b", "{{ a }}")
    assert "b" not in ip.user_ns["__nbconductor__"].pipeline.steps


def test_usage_error_shows_without_traceback(ip, capsys):
    result = ip.run_cell("%%step b\n{{ topc }}")
    assert isinstance(result.error_in_exec, UsageError)
    err = capsys.readouterr()
    shown = err.out + err.err
    assert (
        "did you mean `topic`" in shown and "Traceback" not in shown and "_magics.py" not in shown
    )


def test_python_step_error_shows_its_own_line_and_keeps_other_results(ip, capsys):
    cell(ip, "ok", "A fine step about {{ topic }}")
    result = ip.run_cell("%%step boom --python\nx = 1\ny = x / 0")
    assert type(result.error_in_exec).__name__ == "StepFailed"
    shown = "".join(capsys.readouterr())
    assert "ZeroDivisionError: division by zero (line 2: y = x / 0)" in shown
    assert "_executor.py" not in shown and "Traceback" not in shown
    assert ip.user_ns["ok"].startswith("[offline:default] A fine step")
    rows = Store(ip.user_ns["__nbconductor__"].pipeline.store.path).results()
    assert [(r["step"], r["state"]) for r in rows] == [("ok", "passed"), ("boom", "failed")]


def test_conductor_run_status_show_dry_run_alias_models(ip, capsys):
    cell(ip, "a --lazy", "First about {{ topic }}")
    cell(ip, "b --lazy", "Second from {{ a }}")
    store = ip.user_ns["__nbconductor__"].pipeline.store
    with capture_output() as cap:
        plan = ip.run_line_magic("conductor", "run --dry-run")
    assert [p["step"] for p in plan] == ["a", "b"] and all(p["calls"] == 1 for p in plan)
    assert "nothing was sent" in cap.stdout
    assert store.results() == []
    with capture_output():
        ip.run_line_magic("conductor", "run")
    assert [r["state"] for r in store.results()] == ["passed", "passed"]
    with capture_output() as cap:
        ip.run_line_magic("conductor", "status")
    assert "b " in cap.stdout and "passed" in cap.stdout
    with capture_output() as cap:
        ip.run_line_magic("conductor", "show b")
    assert any("Second from" in o.data.get("text/markdown", "") for o in cap.outputs)
    with capture_output() as cap:
        ip.run_line_magic("conductor", "alias quick offline:quick")
        ip.run_line_magic("conductor", "models")
    assert "quick" in cap.stdout and "offline:quick" in cap.stdout
    with pytest.raises(UsageError, match="unknown subcommand `rnu`: did you mean `run`"):
        ip.run_line_magic("conductor", "rnu")


def test_offline_notice_is_shown_once(ip):
    first = cell(ip, "a", "one")
    second = cell(ip, "b", "two")
    notice = "no `ANTHROPIC_API_KEY` or `OPENAI_API_KEY` is set"
    assert sum(notice in o.data.get("text/markdown", "") for o in first.outputs) == 1
    assert not any(notice in o.data.get("text/markdown", "") for o in second.outputs)


def test_context_blocks(ip, tmp_path):
    (tmp_path / "voice.md").write_text("Warm and direct.")
    ip.run_line_magic("context", "voice --file voice.md")
    ip.run_cell_magic("context", "extra", "Be brief.")
    cell(ip, "draft --context voice --context extra", "Write about {{ topic }}")
    assert "(Written with context: voice, extra.)" in ip.user_ns["draft"]
    with pytest.raises(UsageError, match="file 'missing.md' not found"):
        ip.run_line_magic("context", "x --file missing.md")
    with pytest.raises(UsageError, match="refers to unknown name `nope`"):
        ip.run_cell_magic("step", "d2 --context nope", "x")


def test_unknown_name_suggests_no_ipython_internals(ip):
    with pytest.raises(UsageError) as err:
        ip.run_cell_magic("step", "c", "{{ nope }}")
    assert "did you mean" not in str(err.value) and "define it in a cell" in str(err.value)


def test_status_says_which_steps_the_next_run_calls(ip):
    cell(ip, "a --lazy", "About {{ topic }}")
    cell(ip, "b --lazy", "From {{ a }}")
    with capture_output():
        ip.run_line_magic("conductor", "run")
    with capture_output() as cap:
        ip.run_line_magic("conductor", "status")
    assert [ln.split()[5] for ln in cap.stdout.splitlines()[2:]] == ["cached", "cached"]
    cell(ip, "a --lazy", "About {{ topic }}, briefly")  # edited: a and b will call their model
    with capture_output() as cap:
        ip.run_line_magic("conductor", "status")
    lines = {ln.split()[0]: ln for ln in cap.stdout.splitlines()[2:]}
    assert "calls model ×1" in lines["a"]
    # b's prompt embeds a's output, which is not known until a runs: shown as a call
    assert "calls model ×1" in lines["b"]


# Issue 16 item 13: every mistake in a magic is one line.
@pytest.mark.parametrize(
    "line, body, message",
    [
        (
            "y --python",
            "x = 1\nyield x",
            "step `y`: Python error on line 2: 'yield' outside function",
        ),
        ("y --python", "return 3", "step `y`: Python error on line 1: 'return' outside function"),
        ("y --python", "await thing()", "'await' outside function"),
        (
            "f",
            "{{ topic|nofilter }}",
            "step `f`: template error on line 1: No filter named 'nofilter'.",
        ),
        (
            "inc",
            'Intro {% include "brand.txt" %}',
            "step `inc`: {% include %} on line 1 is not supported",
        ),
        ("inc --lazy", '{% extends "base.txt" %}', "{% extends %} on line 1 is not supported"),
        (
            "inc --lazy",
            '{% from "m.txt" import x %}{{ x }}',
            "{% from … import %} on line 1 is not supported",
        ),
        ("get_ipython", "x", "step name `get_ipython` would hide IPython's `get_ipython`"),
        ("__builtins__", "x", "step name `__builtins__` is a special Python name"),
        (
            "__nbconductor__",
            "x",
            "step name `__nbconductor__` would hide IPython's `__nbconductor__`",
        ),
        ("_i3", "x", "step name `_i3` would hide IPython's `_i3`"),
        (
            "print",
            "x",
            "step name `print` would hide Python's built-in `print`: choose another name, e.g. %%step print_step",
        ),
        ("len", "x", "would hide Python's built-in `len`"),
        ("range", "x", "would hide Python's built-in `range`"),
        ("dict", "x", "would hide Python's built-in `dict`"),
        ("str", "x", "would hide Python's built-in `str`"),
        ("class", "x", "step name `class` is a Python keyword"),
        ("None", "x", "step name `None` is a Python keyword"),
        ("cycler", "x", "step name `cycler` would hide `cycler`, which templates use"),
        ("history", "x", "would hide `history`, which templates use"),
        (
            "b --temperature 2.5",
            "x",
            "step `b`: --temperature must be a number between 0 and 2, got 2.5",
        ),
        ("b --temperature -0.1", "x", "--temperature must be a number between 0 and 2"),
        ("b --temperature nan", "x", "--temperature must be a number between 0 and 2, got nan"),
        ("b --temperature inf", "x", "--temperature must be a number between 0 and 2, got inf"),
        ("b --max-tokens 0", "x", "step `b`: --max-tokens must be 1 or more and at most 128,000"),
        ("b --max-tokens -5", "x", "--max-tokens must be 1 or more"),
        ("b --max-tokens 10000000", "x", "--max-tokens must be 1 or more and at most 128,000"),
        ("b --retries -1", "x", "step `b`: --retries must be between 0 and 100, got -1"),
        ("b --tools f --max-turns 0", "x", "--max-turns must be between 1 and 100, got 0"),
    ],
)
def test_magic_mistakes_are_one_line(ip, line, body, message):
    with pytest.raises(UsageError) as err:
        ip.run_cell_magic("step", line, body)
    assert message in str(err.value) and "\n" not in str(err.value)
    name = line.split()[0]
    assert name not in ip.user_ns["__nbconductor__"].pipeline.steps


def test_step_names_of_imported_modules_and_functions_are_refused(ip):
    ip.run_cell("import json\nimport numpy as np\ndef summarize(text):\n    return text[:10]")
    for name, what in [
        ("json", "the module `json`"),
        ("np", "the module `numpy`"),
        ("summarize", "the function `summarize`"),
    ]:
        with pytest.raises(
            UsageError, match=f"step name `{name}` would replace {what}.*e.g. %%step {name}_step"
        ):
            ip.run_cell_magic("step", name, "x")
    # every later magic still works, and re-declaring a step is not a clash with its own output
    cell(ip, "fine --python", "lambda: 1")
    cell(ip, "fine --python", "lambda: 2")
    assert ip.user_ns["fine"]() == 2
    with capture_output():
        ip.run_line_magic("conductor", "reset")


def test_rubric_numbers_are_checked_at_declaration(ip):
    cell(ip, "draft --lazy", "About {{ topic }}")
    for line, message in [
        ("draft --retries -1", "%%rubric draft: --retries must be between 0 and 100, got -1"),
        ("draft --max-tokens 0", "--max-tokens must be 1 or more"),
        ("draft --max-tokens 999999", "at most 128,000"),
        ("draft --threshold nan", "--threshold must be between 0 and 1"),
        ("draft --threshold 1.5", "--threshold must be between 0 and 1"),
    ]:
        with pytest.raises(UsageError) as err:
            ip.run_cell_magic("rubric", line, "- Is it good?")
        assert message in str(err.value) and "\n" not in str(err.value)
    assert ip.user_ns["__nbconductor__"].pipeline.steps["draft"].rubric is None


def test_unbalanced_quotes_in_conductor_are_one_line(ip):
    with pytest.raises(
        UsageError, match=r"%conductor: cannot parse 'run \"unbalanced': No closing quotation"
    ):
        ip.run_line_magic("conductor", 'run "unbalanced')


def test_include_never_reaches_status_or_dry_run(ip):
    cell(ip, "ok --lazy", "About {{ topic }}")
    with pytest.raises(UsageError):
        ip.run_cell_magic("step", "inc --lazy", '{% include "x" %}')
    with capture_output() as cap:
        ip.run_line_magic("conductor", "status")
        plan = ip.run_line_magic("conductor", "run --dry-run")
    assert [p["step"] for p in plan] == ["ok"] and "inc" not in cap.stdout


@pytest.mark.parametrize(
    "body",
    [
        "(i for i in range(3))",
        "class Local:\n    pass\nLocal()",
        "import os\nos.environ",
        "import threading\nthreading.Lock()",
    ],
)
def test_python_step_with_an_unstorable_output_keeps_the_run(ip, body):
    cell(ip, "first", "About {{ topic }}")
    result = ip.run_cell("%%step odd --python\n" + body)
    assert result.error_in_exec is None
    assert ip.user_ns["odd"] is not None  # kept in memory for the session
    with capture_output():
        run = ip.run_line_magic("conductor", "run")
    assert run is None
    rows = Store(ip.user_ns["__nbconductor__"].pipeline.store.path).results()
    assert {r["step"] for r in rows} >= {"first", "odd"} and all(
        r["state"] != "failed" for r in rows
    )


def test_fuzzed_magic_cells_never_show_a_raw_traceback(ip):
    """Seeded fuzz over option and body fragments: every error is a one-line UsageError (or a
    ConductorError, which IPython shows as one line)."""
    import random

    from nbconductor._errors import ConductorError

    ip.run_cell("import os\ndef chk(o):\n    return True")
    rnd = random.Random(16)
    names = ["a", "b", "print", "get_ipython", "os", "1x", "class", "x-y", "", "a.b", "_i", "ok"]
    opts = [
        "--json",
        "--python",
        "--image",
        "--lazy",
        "--model",
        "-m fastt",
        "--after zz",
        "--schema Nope",
        '--map "l in markets"',
        '--map "l in 5"',
        '--when "1/0"',
        '--when "("',
        "--temperature nan",
        "--temperature 3",
        "--max-tokens 0",
        "--max-tokens 99999999",
        "--retries -1",
        "--retries x",
        "--check nope",
        '--check "("',
        "--on-fail nope",
        "--tools nope",
        "--max-turns 0",
        "--system '{{ os }}'",
        '"unbal',
        "--bogus",
    ]
    bodies = [
        "{{ topic }}",
        "{{ a }}",
        "{{ nope }}",
        "{{ os.getcwd() }}",
        "{% include 'x' %}",
        "{{ ",
        "{{ 9**99999 }}",
        "{{ 1/0 }}",
        "{{ topic|nofilter }}",
        "{{ markets[5] }}",
        "return 1",
        "yield 1",
        "1/0",
        "(i for i in [1])",
        "{{ history(1, 2, 3) }}",
        "",
        "{{ topic.__class__ }}",
        "def f(:",
        "{{ l }}",
    ]
    lines = [
        "run",
        "run nope",
        'run "unbal',
        "status",
        "show",
        "show nope",
        "alias q",
        "alias q nope",
        "bogus",
        "",
        "export",
        "template-function",
        "template-function os",
        "run --dry-run a b",
    ]
    rubrics = [
        "a",
        "a --threshold 2",
        "a --threshold x",
        "a --retries -1",
        "a --max-tokens 0",
        "nope",
        "",
        '"a',
    ]
    raw = []
    for _ in range(250):
        kind = rnd.random()
        if kind < 0.65:
            source = f"%%step {' '.join([rnd.choice(names)] + rnd.sample(opts, rnd.randint(0, 3)))}\n{rnd.choice(bodies)}"
        elif kind < 0.8:
            source = f"%%rubric {rnd.choice(rubrics)}\n- good?"
        else:
            source = f"%conductor {rnd.choice(lines)}"
        with capture_output():
            result = ip.run_cell(source)
        error = result.error_in_exec or result.error_before_exec
        if error is not None and not isinstance(error, (UsageError, ConductorError)):
            raw.append((source, repr(error)))
    assert raw == []
