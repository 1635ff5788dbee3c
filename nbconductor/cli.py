"""The ``nbconductor`` command line: run, batch, report, review, new."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def _offline(args: argparse.Namespace) -> None:
    if getattr(args, "offline", False):
        import os

        os.environ["NBCONDUCTOR_OFFLINE"] = "1"  # inherited by kernels and batch workers


def _check_store(notebook: str, store: str | None = None) -> None:
    """Refuse, before anything runs, a store path that is not a run store (`StoreError`, exit 2)."""
    from pathlib import Path

    from .handoff._batch import _store_path
    from .store._sqlite import check_store

    check_store(_store_path(store, Path(notebook).resolve()))


def _run(args: argparse.Namespace) -> int:
    from .handoff._runner import run_notebook

    _offline(args)
    _check_store(args.notebook)

    return run_notebook(args.notebook, args.output, args.parameters or [], engine=args.engine)


#: a CLI function's keyword whose option has another name on the command line
_OPTION_NAMES = {"as_json": "json", "take_next": "next"}


def _forward(fn, args: argparse.Namespace, *positional: object) -> int:
    """Call a CLI function with plain arguments: ``positional``, then each of its keyword-only
    parameters from the parsed option of that name."""
    import inspect

    keywords = [
        p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY
    ]
    return fn(*positional, **{k: getattr(args, _OPTION_NAMES.get(k, k)) for k in keywords})


def _job(fn, args: argparse.Namespace, *positional: object) -> int:
    """`_forward` for a command that runs a notebook job: ``--offline`` and the store are
    settled first (a bad store is exit 2 before anything runs)."""
    _offline(args)
    _check_store(args.notebook, args.store)
    return _forward(fn, args, *positional)


def _batch(args: argparse.Namespace) -> int:
    from .handoff._batch import cli_batch

    return _job(cli_batch, args, args.notebook, args.params)


def _report(args: argparse.Namespace) -> int:
    if args.experiment:
        from .store._experiments import cli_experiment

        return cli_experiment(args.store, args.experiment, as_json=args.json)
    from .store._report import cli_report

    return cli_report(args.store, as_json=args.json)


def _review(args: argparse.Namespace) -> int:
    if args.serve:
        from .handoff._serve import serve

        return serve(args.store, port=args.port, ip=args.ip)
    from .store._review import cli_review

    return _forward(cli_review, args, args.store)


def _store(args: argparse.Namespace) -> int:
    from .store._copy import cli_store_copy

    return cli_store_copy(args.src, args.dst, merge_into=args.merge)


def _compare(args: argparse.Namespace) -> int:
    from .handoff._evaluate import cli_compare

    return _job(cli_compare, args, args.notebook, args.step, args.data)


def _eval(args: argparse.Namespace) -> int:
    from .handoff._evaluate import cli_eval

    return _job(cli_eval, args, args.notebook, args.data)


def _new(args: argparse.Namespace) -> int:
    from .handoff._templates import new_from_template

    return new_from_template(args.template, args.path)


def build_parser() -> argparse.ArgumentParser:
    """The ``nbconductor`` argument parser: one sub-command per ``_add_*`` below."""
    parser = argparse.ArgumentParser(prog="nbconductor", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nbconductor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_batch(sub)
    _add_review(sub)
    _add_compare(sub)
    _add_new(sub)
    return parser


def _add_run(sub) -> None:
    """``nbconductor run NOTEBOOK [-p NAME VALUE ...] [-o OUT] [--engine] [--offline]``."""
    run = sub.add_parser("run", help="run a notebook once (papermill-compatible)")
    run.add_argument("notebook")
    run.add_argument(
        "-p",
        "--parameters",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="a parameter (repeatable); values are read as YAML, like papermill -p",
    )
    run.add_argument(
        "-o", "--output", help="the executed notebook (default: NOTEBOOK with .out.ipynb)"
    )
    run.add_argument(
        "--engine",
        default=None,
        help="papermill engine (default: nbconductor's in-process engine "
        "for exported jobs, else papermill's kernel engine)",
    )
    run.add_argument(
        "--offline",
        action="store_true",
        help="every step uses the offline provider, even with API keys set (no network, no cost)",
    )
    run.set_defaults(func=_run)


def _add_batch(sub) -> None:
    """``nbconductor batch NOTEBOOK --params FILE [...]``: one run per parameter row."""
    batch = sub.add_parser("batch", help="one run per parameter row, in parallel")
    batch.add_argument("notebook")
    batch.add_argument("--params", required=True, help="rows of parameters: .csv, .yaml or .json")
    batch.add_argument(
        "--workers", type=int, default=None, help="local worker processes (default: CPU count)"
    )
    batch.add_argument(
        "--dask", metavar="ADDRESS", help="send rows to a Dask cluster, e.g. tcp://host:8786"
    )
    batch.add_argument(
        "--out", default="batch-out", help="folder for output notebooks (default batch-out)"
    )
    batch.add_argument(
        "--resume", action="store_true", help="skip rows that finished in an earlier batch"
    )
    batch.add_argument("--engine", default=None, help="papermill engine for each row")
    batch.add_argument(
        "--store", help="run store (default: .nbconductor/store.sqlite beside the notebook)"
    )
    batch.add_argument(
        "--offline", action="store_true", help="every step uses the offline provider"
    )
    batch.add_argument(
        "--provider-batch",
        action="store_true",
        help="send the model calls through the providers' batch APIs, at their batch price",
    )
    batch.add_argument(
        "--batch-window",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --provider-batch: collect calls at most this long before submitting (default 5)",
    )
    batch.add_argument(
        "--dry-run",
        action="store_true",
        help="with --provider-batch: estimate calls, batch cost and saving; send nothing",
    )
    batch.set_defaults(func=_batch)


def _add_review(sub) -> None:
    """``nbconductor report``, ``review`` and ``store copy``: what a store holds."""
    report = sub.add_parser("report", help="per-step quality and cost metrics across runs")
    report.add_argument("--store", help="run store path")
    report.add_argument("--json", action="store_true", help="print JSON")
    report.add_argument(
        "--experiment", metavar="ID", help="a compare's figures (an id, or `list`, or `latest`)"
    )
    report.set_defaults(func=_report)

    review = sub.add_parser("review", help="list flagged outputs; approve or reject by id")
    review.add_argument("--store", help="run store path")
    review.add_argument("--approve", type=int, action="append", default=[], metavar="ID")
    review.add_argument("--reject", type=int, action="append", default=[], metavar="ID")
    review.add_argument("--note", default="", help="a note recorded with the decisions")
    review.add_argument("--assign", metavar="USER[,USER…]", help="assign waiting items round-robin")
    review.add_argument("--mine", action="store_true", help="only the items assigned to me")
    review.add_argument("--next", action="store_true", help="claim and show the next free item")
    review.add_argument("--serve", action="store_true", help="the queue as a web page (Voilà)")
    review.add_argument("--port", type=int, default=8866, help="--serve: the port (8866)")
    review.add_argument("--ip", default="127.0.0.1", help="--serve: the address (127.0.0.1)")
    review.set_defaults(func=_review)

    store = sub.add_parser("store", help="run store maintenance: copy")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    copy = store_sub.add_parser("copy", help="copy a store (SQLite <-> PostgreSQL)")
    copy.add_argument("src", help="the store to copy (a path or postgresql:// URL)")
    copy.add_argument("dst", help="where to copy it (refused when not empty, unless --merge)")
    copy.add_argument("--merge", action="store_true", help="add to a store that has rows")
    copy.set_defaults(func=_store)


def _add_compare(sub) -> None:
    """``nbconductor compare`` and ``eval``: a job over a dataset."""
    compare = sub.add_parser("compare", help="a step's variants side by side over a dataset")
    compare.add_argument("notebook")
    compare.add_argument("--step", required=True, help="the step whose variants are compared")
    compare.add_argument("--data", required=True, help="rows of parameters: .csv, .yaml or .json")
    compare.add_argument("--variants", help="comma-separated variants (default: all, base first)")
    compare.add_argument("--repeats", type=int, default=1, help="runs per row and variant")
    compare.add_argument("--workers", type=int, default=None, help="rows in flight (default 8)")
    compare.add_argument(
        "--pairwise", metavar="SPEC", help="a judge model picks the better of two outputs"
    )
    compare.add_argument("--json", action="store_true", help="print the figures as JSON")
    compare.add_argument("--out", help="a folder for the HTML report (compare-STEP.html)")
    compare.add_argument("--store", help="run store (default: beside the notebook)")
    compare.add_argument(
        "--offline", action="store_true", help="every step uses the offline provider"
    )
    compare.set_defaults(func=_compare)

    ev = sub.add_parser("eval", help="the job over a dataset; exit 1 on a regression")
    ev.add_argument("notebook")
    ev.add_argument("--data", required=True, help="rows of parameters: .csv, .yaml or .json")
    ev.add_argument("--save", metavar="BASELINE.json", help="write the figures as a baseline")
    ev.add_argument("--baseline", metavar="BASELINE.json", help="exit 1 on a drop against it")
    ev.add_argument("--max-drop", type=float, default=0.05, help="allowed drop (default 0.05)")
    ev.add_argument("--workers", type=int, default=None, help="rows in flight (default 8)")
    ev.add_argument("--json", action="store_true", help="print the figures as JSON")
    ev.add_argument("--store", help="run store (default: beside the notebook)")
    ev.add_argument("--offline", action="store_true", help="every step uses the offline provider")
    ev.set_defaults(func=_eval)


def _add_new(sub) -> None:
    """``nbconductor new TEMPLATE PATH``."""
    new = sub.add_parser("new", help="start a notebook from a template")
    new.add_argument("template", help="newsletter, content-factory or support-triage")
    new.add_argument("path", help="the notebook to create")
    new.set_defaults(func=_new)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nbconductor`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    from ._errors import ConductorError

    try:
        return int(args.func(args) or 0)
    except ConductorError as exc:
        print(f"nbconductor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nbconductor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
