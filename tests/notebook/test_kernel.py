"""A real kernel: interrupting a run cancels it cleanly and keeps what finished."""

import time

import pytest
from jupyter_client.manager import start_new_kernel

from nbconductor.store._sqlite import Store


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("NBCONDUCTOR_STORE", str(tmp_path / "store.sqlite"))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def execute(kc, code, timeout=60):
    msg_id = kc.execute(code)
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    return reply["content"]


def test_interrupt_cancels_the_run_and_keeps_finished_steps(kernel, tmp_path):
    km, kc = kernel
    assert execute(kc, "%load_ext nbconductor")["status"] == "ok"
    assert execute(kc, "%%step quick --model offline:a --lazy\nA quick step")["status"] == "ok"
    assert (
        execute(kc, "%%step slow --python --lazy\nimport time\ntime.sleep(30)\nquick")["status"]
        == "ok"
    )
    msg_id = kc.execute("%conductor run")
    store_path = tmp_path / "store.sqlite"
    deadline = time.time() + 30
    while time.time() < deadline:
        if store_path.exists() and any(r["step"] == "quick" for r in Store(store_path).results()):
            break
        time.sleep(0.1)
    started = time.time()
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=20)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert (
        reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    )
    assert time.time() - started < 10  # did not wait for the 30 s sleep
    # the kernel is usable at once, and the finished step is not redone
    content = execute(kc, "%conductor run quick\nprint(quick[:12])", timeout=20)
    assert content["status"] == "ok"
    store = Store(store_path)
    rows = store.results()
    assert [(r["step"], r["cached"]) for r in rows] == [("quick", 0), ("quick", 1)]
    assert store.runs()[-1]["status"] == "interrupted"
