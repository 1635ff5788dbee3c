"""Parameter rows in: a batch's .csv, .yaml/.yml, .json or .jsonl file, or rows given from Python.

Names are identifiers and values plain data (`nbconductor._params`); every problem is one
`OptionError` line naming the file and the row. Nothing read here is executed.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._errors import OptionError
from .._params import check_name, check_names, check_value
from ._runner import parse_value

__all__ = ["given_rows", "plural", "read_rows"]


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Parameter rows from a .csv, .yaml/.yml, .json or .jsonl file.

    A CSV row has a value per column (an empty cell, like a name a YAML/JSON row leaves out,
    keeps the notebook's default); names are identifiers and values plain data
    (`nbconductor._params`). Raises `OptionError` (a `ParameterError` for a bad name or value)
    with one line naming the file and the row.
    """
    p = Path(path)
    if not p.is_file():
        raise OptionError(f"--params file {str(path)!r} not found")
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".yaml", ".yml", ".json", ".jsonl"):
        raise OptionError(f"--params {p.name}: use a .csv, .yaml or .json file of parameter rows")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OptionError(
            f"--params {p.name} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): "
            'save it as UTF-8 (e.g. Excel\'s "CSV UTF-8")'
        ) from None
    where = f"--params {p.name}"
    if suffix == ".csv":
        return _csv_rows(text, where)
    try:
        if suffix in (".yaml", ".yml"):
            rows = _yaml_load(text)
        elif suffix == ".json":
            rows = json.loads(text, object_pairs_hook=_no_duplicates)
        else:
            rows = [
                json.loads(line, object_pairs_hook=_no_duplicates)
                for line in text.split("\n")
                if line.strip()
            ]
    except OptionError as exc:
        raise OptionError(f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - yaml and json each raise their own
        raise OptionError(f"{where} cannot be read: {_one_line(exc)}") from None
    if isinstance(rows, dict) and isinstance(rows.get("rows"), list):
        rows = rows["rows"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise OptionError(
            f"{where} must hold a list of rows, each a mapping of parameter names "
            'to values (e.g. [{"topic": "Pricing"}, {"topic": "Onboarding"}])'
        )
    if not rows:
        raise OptionError(f"{where} has no rows")
    for i, row in enumerate(rows):
        check_names(row, f"{where}, row {i}")
    out = [{str(k): _plain(v) for k, v in r.items()} for r in rows]
    for i, row in enumerate(out):
        for name, value in row.items():
            check_value(name, value, f"{where}, row {i}")
    return out


def _csv_rows(text: str, where: str) -> list[dict[str, Any]]:
    lines = [r for r in csv.reader(io.StringIO(text, newline="")) if r]  # blank lines are not rows
    if not lines:
        raise OptionError(f"{where} has no rows")
    header = [h.strip() for h in lines[0]]
    for col, name in enumerate(header, 1):
        if not name:
            raise OptionError(f"{where}: column {col} of the header has no name: name every column")
        check_name(name, f"{where}, column {col}")
        if header.index(name) != col - 1:
            raise OptionError(f"{where}: column `{name}` appears twice in the header: keep one")
    rows = []
    for i, fields in enumerate(lines[1:]):
        if len(fields) != len(header):
            raise OptionError(
                f"{where}: row {i} has {plural(len(fields), 'value')} for {plural(len(header), 'column')} "
                f"({', '.join(header)}): give every row a value per column (an empty one keeps "
                "the notebook's default)"
            )
        rows.append({k: _csv_value(v) for k, v in zip(header, fields, strict=True) if v != ""})
    if not rows:
        raise OptionError(f"{where} has no rows")
    return rows


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise OptionError(f"`{key}` appears twice in one row: keep one")
        seen[key] = value
    return seen


def _yaml_load(text: str) -> Any:
    """``yaml.safe_load``, refusing a key given twice in one mapping (YAML keeps the last)."""
    import yaml

    # Composing builds the node tree only (no Python objects), so the check runs on plain data.
    stack = [yaml.compose(text, Loader=yaml.SafeLoader)]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and keys.count(key.value) > 1:
                    raise OptionError(
                        f"`{key.value}` appears twice in one row "
                        f"(line {key.start_mark.line + 1}): keep one"
                    )
            stack += [v for _, v in node.value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    return yaml.safe_load(text)


def _one_line(exc: BaseException) -> str:
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:  # a YAML error: its first line and where it is
        return f"{getattr(exc, 'problem', None) or exc} at line {mark.line + 1}, column {mark.column + 1}"
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _csv_value(text: str) -> Any:
    stripped = text.strip()
    if stripped[:1] in "[{":
        with contextlib.suppress(ValueError):
            return json.loads(stripped)
    return parse_value(text)


def _plain(value: Any) -> Any:
    # YAML dates and the like become strings papermill can write into a cell.
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def given_rows(rows: Any) -> list[dict[str, Any]]:
    """Rows passed from Python: a non-empty list of mappings of parameter names to plain data."""
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, Mapping) for r in rows):
        raise OptionError("batch rows must be a params file or a list of mappings")
    if not rows:
        raise OptionError("batch rows: there are no rows")
    out = []
    for i, row in enumerate(rows):
        check_names(row, f"row {i}")
        plain = {str(k): _plain(v) for k, v in row.items()}
        for name, value in plain.items():
            check_value(name, value, f"row {i}")
        out.append(plain)
    return out


def plural(n: int, word: str) -> str:
    """``1 row``, ``2 rows``."""
    return f"{n} {word}{'' if n == 1 else 's'}"
