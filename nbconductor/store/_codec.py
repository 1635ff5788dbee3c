"""Step outputs as stored bytes, in formats that cannot run code when read back.

A run store is data, never code: it may arrive beside a cloned notebook or through ``--store``,
so nothing read from it is unpickled or executed. Each output is stored with a *kind*:

=============  ==================================================================
``text``       a ``str``, UTF-8
``json``       anything ``json.dumps`` takes (lists, dicts, numbers, None, bools)
``pydantic``   a pydantic model, as its JSON (``--schema`` turns it back into the model)
``bytes``      bytes, e.g. an ``--image`` step's PNG
``ndarray``    a numpy array (not of Python objects), as ``.npy`` read with ``allow_pickle=False``
``dataframe``  a pandas DataFrame, as Arrow IPC (needs pyarrow)
``unstored``   anything else: only its ``repr`` is recorded. The value itself stays in the
               session's memory (a cache hit there still works); a later session runs the step again.
``pickle``     written by nbconductor before 0.2; never loaded (a cache miss)
=============  ==================================================================
"""

from __future__ import annotations

import functools
import io
import json
import math
import types
from collections.abc import Callable
from typing import Any

#: kinds whose stored bytes give the value back (the others are only a description of it)
LOADABLE = frozenset({"text", "json", "pydantic", "bytes", "ndarray", "dataframe"})
_REPR_LIMIT = 2000


class Unstored:
    """A stored output whose value was not kept: its ``repr`` (or why it cannot be loaded)."""

    __slots__ = ("kind", "text")

    def __init__(self, text: str, kind: str = "unstored"):
        self.text, self.kind = text, kind

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unstored) and (self.kind, self.text) == (other.kind, other.text)

    def __hash__(self) -> int:
        return hash((self.kind, self.text))


def _identity(text: str) -> str:
    return text


def encode_output(value: Any, redactor: Callable[[str], str] | None = None) -> tuple[str, bytes]:
    """``(kind, bytes)`` for storing ``value``; never pickles. Text is passed through ``redactor``."""
    if redactor is None:
        from .._redact import redactor as _redactor

        redactor = _redactor()
    if isinstance(value, (bytes, bytearray)):
        return "bytes", bytes(value)
    if isinstance(value, Unstored):
        return "unstored", redactor(value.text).encode()
    if hasattr(value, "model_dump") and hasattr(value, "model_dump_json"):
        try:
            return "pydantic", redactor(json.dumps(value.model_dump(mode="json"))).encode()
        except (TypeError, ValueError):
            pass
    if isinstance(value, str):
        return "text", redactor(value).encode()
    try:
        return "json", redactor(json.dumps(value, ensure_ascii=False, allow_nan=False)).encode()
    except (TypeError, ValueError, RecursionError):
        pass
    encoded = _rich(value, redactor)
    if encoded is not None:
        return encoded
    return "unstored", redactor(_describe(value)).encode()


def decode_output(kind: str | None, blob: bytes | None) -> Any:
    """The value stored as ``(kind, blob)``; an `Unstored` for ``unstored`` and ``pickle`` rows.

    Raises ``ValueError`` for a kind this version does not know.
    """
    if blob is None or kind is None:
        return None
    if kind == "bytes":
        return bytes(blob)
    if kind == "text":
        return bytes(blob).decode()
    if kind in ("json", "pydantic"):
        return json.loads(blob)
    if kind == "ndarray":
        try:
            import numpy as np
        except ImportError:
            return Unstored("<a numpy array: install numpy to load it>")
        return np.load(io.BytesIO(blob), allow_pickle=False)
    if kind == "dataframe":
        try:
            import pyarrow as pa
        except ImportError:
            return Unstored("<a pandas DataFrame: install pandas and pyarrow to load it>")
        if not _safe_pyarrow(pa.__version__):
            # before 14.0.1, reading an extension type could unpickle (CVE-2023-47248)
            return Unstored(
                f"<a pandas DataFrame: pyarrow {pa.__version__} cannot read it safely; "
                "install pyarrow >= 14.0.1>"
            )
        with pa.ipc.open_stream(pa.BufferReader(bytes(blob))) as reader:
            return reader.read_all().to_pandas()
    if kind == "unstored":
        return Unstored(bytes(blob).decode(errors="replace"))
    if kind == "pickle":
        return Unstored("<not loaded: pickled by an older nbconductor>", "pickle")
    raise ValueError(f"unknown output kind {kind!r}")


def _safe_pyarrow(version: str) -> bool:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts))) >= (14, 0, 1)


def loadable(kind: str | None) -> bool:
    """Whether a stored output of ``kind`` gives its value back (and can serve a cache hit)."""
    return kind is None or kind in LOADABLE


def _rich(value: Any, redactor: Callable[[str], str]) -> tuple[str, bytes] | None:
    """numpy arrays and pandas DataFrames in their own safe formats; None for anything else."""
    module = type(value).__module__ or ""
    if module.startswith("numpy"):
        import numpy as np

        if isinstance(value, np.ndarray) and value.dtype != object:
            if value.dtype.kind in "US" and _has_secret(value.ravel().tolist(), redactor):
                return None
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            return "ndarray", buf.getvalue()
        return None
    if module.startswith("pandas") and type(value).__name__ == "DataFrame":
        try:
            import pyarrow as pa
        except ImportError:
            return None
        try:
            table = pa.Table.from_pandas(value)
        except (pa.ArrowException, TypeError, ValueError):
            return None  # columns of Python objects: no safe form
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        blob = sink.getvalue().to_pybytes()
        # Arrow keeps strings as contiguous UTF-8: a secret in a cell is a secret in the bytes.
        text = blob.decode("latin-1")
        return None if redactor(text) != text else ("dataframe", blob)
    return None


def _has_secret(items: list, redactor: Callable[[str], str]) -> bool:
    text = "\n".join(map(str, items))
    return redactor(text) != text


def _describe(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - a user's __repr__ may raise anything
        text = f"<{type(value).__qualname__} (repr failed: {type(exc).__name__})>"
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 1] + "…"
    return text


def canonical_bytes(value: Any) -> bytes:
    """Bytes equal across processes when ``value`` is, for cache keys; never pickles.

    JSON for JSON-able values (the same bytes as before for them), with sets, bytes, numpy
    arrays, DataFrames, dataclasses, pydantic models and plain objects' attributes spelled
    out; a value with none of these is its type and ``repr``.
    """
    if hasattr(value, "model_dump_json"):
        try:
            return value.model_dump_json().encode()
        except Exception:  # noqa: BLE001 - fall through to the generic forms
            pass
    try:
        return json.dumps(value, sort_keys=True, default=_canonical_default).encode()
    except (TypeError, ValueError, RecursionError):
        return f"{_type_name(value)}:{_describe(value)}".encode()


def _canonical_default(value: Any) -> Any:
    import hashlib
    from dataclasses import fields, is_dataclass

    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, (bytes, bytearray)):
        return hashlib.sha256(value).hexdigest()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    module = type(value).__module__ or ""
    if module.startswith("numpy"):
        import numpy as np

        if isinstance(value, np.ndarray):
            if value.dtype == object:
                return {
                    "ndarray": "object",
                    "shape": list(value.shape),
                    "items": value.ravel().tolist(),
                }
            data = np.ascontiguousarray(value)
            return {
                "ndarray": data.dtype.str,
                "shape": list(data.shape),
                "sha256": hashlib.sha256(data.tobytes()).hexdigest(),
            }
        if isinstance(value, np.generic):
            return {"numpy": value.dtype.str, "value": value.item()}
    if module.startswith("pandas") and hasattr(value, "to_json"):
        return {
            "pandas": _type_name(value),
            "json": value.to_json(orient="split", date_format="iso"),
            "dtypes": str(getattr(value, "dtypes", getattr(value, "dtype", ""))),
        }
    if hasattr(value, "model_dump"):
        return {"model": _type_name(value), "data": value.model_dump(mode="json")}
    if is_dataclass(value) and not isinstance(value, type):
        return {
            "dataclass": _type_name(value),
            "fields": {f.name: getattr(value, f.name) for f in fields(value)},
        }
    if isinstance(value, (types.FunctionType, types.MethodType, functools.partial)):
        from .._tools import code_hash  # the one code hash: a function's code, defaults and closure

        return {
            "function": getattr(value, "__qualname__", _type_name(value)),
            "code": code_hash(value),
        }
    state = getattr(value, "__dict__", None)
    if isinstance(state, dict) and state and not callable(value):
        return {"object": _type_name(value), "state": state}
    return {"type": _type_name(value), "repr": _describe(value)}


def _type_name(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"
