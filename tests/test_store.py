import multiprocessing as mp

from nbconductor._store import Store, decode_output, encode_output
from nbconductor._types import Attempt, GateResult, StepResult, Usage


def _writer(path, n, worker):
    store = Store(path)
    run = store.start_run({"worker": worker}, None, "nb.ipynb")
    for i in range(n):
        store.record(run, StepResult(f"s{i}", "passed", f"w{worker}-{i}", cache_key=f"k{worker}-{i}"))
    store.end_run(run, "passed", 0.0)


def test_several_processes_write_at_once(tmp_path):
    path = tmp_path / "store.sqlite"
    Store(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), 100, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = Store(path)
    assert len(store.results()) == 400
    assert {r["status"] for r in store.runs()} == {"passed"}
    assert store.lookup("k3-99").output == "w3-99"


def test_record_roundtrip_with_audit_fields(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    run = store.start_run({"topic": "x"}, ["draft"], "nb.ipynb")
    result = StepResult(
        "draft", "flagged", {"a": [1, 2]}, prompt="Write", model="offline:w",
        attempts=[Attempt("offline:w", 1.0, 2.0, "gate", "too long", Usage(5, 7), 0.0)],
        gates=[GateResult("rubric", False, 0.4, "too long", "shorten")],
        usage=Usage(5, 7, 1, 2), cost=0.01, started=1.0, ended=2.0, cache_key="key1",
    )
    rid = store.record(run, result, "nb.ipynb")
    back = store.result(rid)
    assert back.output == {"a": [1, 2]} and back.state == "flagged" and back.usage == Usage(5, 7, 1, 2)
    assert back.attempts[0].usage == Usage(5, 7) and back.gates[0].suggestion == "shorten"
    row = store.results(run)[0]
    assert row["user"] and row["notebook"] == "nb.ipynb" and len(row["prompt_hash"]) == 16
    assert row["output_hash"] and row["attempts"] == 1
    assert store.lookup("key1").result_id == rid


def test_output_encoding():
    for value in ["text", {"k": [1, None]}, [1, 2], 3.5, None]:
        assert decode_output(*encode_output(value)) == value
    kind, blob = encode_output(b"\x89PNG")
    assert kind == "bytes" and decode_output(kind, blob) == b"\x89PNG"
    kind, blob = encode_output({1, 2})
    assert kind == "pickle" and decode_output(kind, blob) == {1, 2}


def test_keys_are_redacted_before_writing(tmp_path, monkeypatch):
    canary = "sk-ant-" "canary-0123456789abcdefghij"
    monkeypatch.setenv("ANTHROPIC_API_KEY", canary)
    path = tmp_path / "s.sqlite"
    store = Store(path)
    run = store.start_run({"note": f"key is {canary}"}, None, None)
    store.record(run, StepResult("s", "failed", f"echo {canary}", prompt=canary, error=f"401 for {canary}"))
    store.close()
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert canary.encode() not in data


def test_structured_outputs_are_redacted_too(monkeypatch):
    from pydantic import BaseModel

    canary = "sk-ant-" "canary-0123456789abcdefghij"
    monkeypatch.setenv("ANTHROPIC_API_KEY", canary)

    class Reply(BaseModel):
        text: str

    kind, blob = encode_output(Reply(text=f"the key is {canary}"))
    assert kind == "pydantic" and canary.encode() not in blob and b"[REDACTED]" in blob
