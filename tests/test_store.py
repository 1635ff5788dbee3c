import multiprocessing as mp

from nbconductor._store import Store, Unstored, decode_output, encode_output
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
    assert kind == "unstored" and blob == b"{1, 2}"  # no safe form: only its repr is kept
    back = decode_output(kind, blob)
    assert isinstance(back, Unstored) and repr(back) == "{1, 2}"


def test_rich_outputs_have_safe_encodings():
    import numpy as np
    import pandas as pd

    arr = np.arange(12, dtype="float32").reshape(3, 4)
    kind, blob = encode_output(arr)
    assert kind == "ndarray" and blob.startswith(b"\x93NUMPY")
    back = decode_output(kind, blob)
    assert back.dtype == arr.dtype and (back == arr).all()
    # an array of Python objects would need pickle: it is not stored
    assert encode_output(np.array([object()], dtype=object))[0] == "unstored"
    df = pd.DataFrame({"name": ["a", "b"], "n": [1, 2]}, index=["x", "y"])
    kind, blob = encode_output(df)
    assert kind == "dataframe"
    assert decode_output(kind, blob).equals(df)
    assert encode_output(pd.DataFrame({"o": [object()]}))[0] == "unstored"


def test_secrets_in_rich_outputs_are_not_stored(monkeypatch):
    import numpy as np
    import pandas as pd

    canary = "sk-ant-" "canary-0123456789abcdefghij"
    monkeypatch.setenv("ANTHROPIC_API_KEY", canary)
    for value in (np.array([f"key {canary}"]), pd.DataFrame({"k": [canary]})):
        kind, blob = encode_output(value)
        assert kind == "unstored" and canary.encode() not in blob


def test_cache_keys_hash_without_pickle(monkeypatch):
    import pickle

    import numpy as np

    from nbconductor._executor import stable_hash

    def refuse(*args, **kwargs):
        raise AssertionError("stable_hash pickled a value")

    monkeypatch.setattr(pickle, "dumps", refuse)

    class Point:
        def __init__(self, x):
            self.x = x

    assert stable_hash(Point(1)) == stable_hash(Point(1)) != stable_hash(Point(2))
    assert stable_hash(np.arange(3)) == stable_hash(np.arange(3)) != stable_hash(np.arange(4))
    assert stable_hash({"a", "b"}) == stable_hash({"b", "a"})
    assert stable_hash({"k": [1, 2]}) == stable_hash({"k": [1, 2]})


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
