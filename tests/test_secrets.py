"""A canary key that really goes out to the (fake) provider appears in no file nbconductor writes:
not the store, not error messages shown or printed, not logs."""

from __future__ import annotations

import logging

import anthropic  # noqa: F401 - the test extras install both SDKs
import openai  # noqa: F401
import pytest
from fakeapi import Error, Text

from nbconductor import Pipeline
from nbconductor._redact import redact

CANARY = "sk-ant-" + "canary0123456789abcdef0123"
OPENAI_CANARY = "sk-proj-" + "canaryOPENAI0123456789abcdef"
SHAPED = "sk-" + "abcdefghijklmnopqrstuv"  # key-shaped, matched by pattern only


def files_containing(root, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(f) for f in root.rglob("*") if f.is_file() and needle in f.read_bytes()]


@pytest.fixture
def debug_log(tmp_path):
    """Everything logged at DEBUG (the SDKs and HTTP library included) goes to a file in tmp_path."""
    handler = logging.FileHandler(tmp_path / "debug.log")
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield tmp_path / "debug.log"
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def test_canary_key_is_in_no_written_file(
    fake_api, fast_config, tmp_path, monkeypatch, capsys, debug_log
):
    monkeypatch.setenv("ANTHROPIC_API_KEY", CANARY)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_CANARY)
    # The provider echoes the key in its error, and the fallback model repeats it in its answer.
    fake_api.script(Error(401, f"invalid x-api-key: {CANARY}"), endpoint="anthropic")

    def openai_reply(body):  # the two steps run concurrently: answer by prompt, not by order
        if body["messages"][-1]["content"] == "Hello":
            return Error(500, f"internal error for key {OPENAI_CANARY}")
        return Text(f"Your keys are {CANARY} and {OPENAI_CANARY}.")

    fake_api.set_default(openai_reply, endpoint="openai")
    p = Pipeline(store=tmp_path / "store.sqlite", config=fast_config, root=tmp_path)
    p.step("leaky", "Hi", model="anthropic:claude-haiku-4-5", fallbacks=["openai:gpt-4.1-mini"])
    p.step("broken", "Hello", model="openai:gpt-4.1-mini", retries=0)
    run = p.run()
    print(run.summary())
    for result in run.results.values():
        print(result.error, result.attempts)
    (tmp_path / "summary.md").write_text(run.summary())
    p.close()

    # the keys really went out, so their absence below means something
    assert CANARY in fake_api.requests_for("anthropic")[0].headers["authorization"]
    assert OPENAI_CANARY in fake_api.requests_for("openai")[0].headers["authorization"]
    # a model echoing a key: the output itself is redacted, so no display can show it
    assert run.results["leaky"].output == "Your keys are [REDACTED] and [REDACTED]."
    assert run.results["broken"].state == "failed"
    assert debug_log.stat().st_size > 0  # the SDKs did log at DEBUG
    assert files_containing(tmp_path, CANARY) == []
    assert files_containing(tmp_path, OPENAI_CANARY) == []
    printed = capsys.readouterr()
    assert (
        CANARY not in printed.out + printed.err and OPENAI_CANARY not in printed.out + printed.err
    )
    assert "set ANTHROPIC_API_KEY to a valid key" in printed.out
    stored = p.store.query("SELECT output FROM results WHERE step='leaky'")[0]["output"]
    assert b"[REDACTED]" in stored
    p.close()


def test_magic_errors_show_no_key(fake_api, tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    from nbconductor.notebook._magics import ConductorMagics

    monkeypatch.setenv("ANTHROPIC_API_KEY", CANARY)
    monkeypatch.setenv("NBCONDUCTOR_STORE", str(tmp_path / "store.sqlite"))
    monkeypatch.chdir(tmp_path)
    fake_api.script(Error(401, f"invalid x-api-key: {CANARY}"), endpoint="anthropic")
    shell = InteractiveShell.instance()
    shell.user_ns.clear()
    shell.init_user_ns()
    magics = ConductorMagics(shell)
    shell.register_magics(magics)
    with capture_output() as cap:
        result = shell.run_cell("%%step draft --model anthropic:claude-haiku-4-5\nWrite a haiku")
    magics.pipeline.close()
    shown = (
        cap.stdout
        + cap.stderr
        + "".join(str(o.data) for o in cap.outputs)
        + str(result.error_in_exec)
    )
    assert "ANTHROPIC_API_KEY" in shown
    assert CANARY not in shown
    assert files_containing(tmp_path, CANARY) == []


def test_redact_covers_key_shapes(monkeypatch):
    monkeypatch.setenv("MY_SERVER_API_KEY", "local-server-secret-42")
    text = (
        f"x-api-key: abcdefgh12345678 {CANARY} {OPENAI_CANARY} {SHAPED} "
        "Authorization: Bearer abcdefghijklmnop1234 and local-server-secret-42"
    )
    cleaned = redact(text)
    for secret in (
        CANARY,
        OPENAI_CANARY,
        SHAPED,
        "abcdefghijklmnop1234",
        "local-server-secret-42",
        "abcdefgh12345678",
    ):
        assert secret not in cleaned
