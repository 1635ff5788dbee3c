"""``nbconductor batch --provider-batch``: the coordinator's side (broker, progress, dry run).

Rows run in local worker processes as usual, one notebook per row; the coordinator runs a
`Broker` (`nbconductor.handoff._broker`) and tells the workers where it listens
(``NBCONDUCTOR_BATCH_BROKER``), so every Anthropic / OpenAI call of every row travels in a
provider batch at the batch price. A waiting row holds its worker, so the batch holds the calls
of as many rows as there are workers: ``--workers`` defaults to one per row in this mode, as
many as fit in memory and file descriptors (`worker_count`). Submitted batches are journaled
in the run store (`nbconductor.store._batches`, by output folder) and in ``manifest.json``
(``provider_batches``) before the coordinator waits for them; ``--resume`` collects them,
from whichever of the two still has them.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._batchcall import BROKER_ENV
from .._errors import ConductorError, OptionError
from ._broker import Broker
from ._runner import environ

WORKER_MEMORY = 48 * 2**20  # what a warm worker holds while its row waits (measured 37-47 MB)
MAX_WORKERS = 2000  # a ceiling whatever the machine
FALLBACK_WORKERS = 100  # where the available memory cannot be read
DEFAULT_WINDOW = 5.0


def check_options(*, provider_batch: bool, dask: str | None, window: float | None) -> float:
    """The batch window in seconds; `OptionError` for options that do not go together."""
    if window is not None and not provider_batch:
        raise OptionError("--batch-window needs --provider-batch")
    if provider_batch and dask:
        raise OptionError(
            "--provider-batch does not combine with --dask: the batch broker runs beside local "
            "workers; leave out --dask"
        )
    if window is not None and not window > 0:
        raise OptionError(f"--batch-window must be more than 0 seconds, got {window:g}")
    return DEFAULT_WINDOW if window is None else window


def worker_count(requested: int | None, rows: int) -> int:
    """Default workers in this mode: one per row (a waiting row holds its worker), as many as
    fit in three quarters of the memory available now and in the coordinator's file
    descriptors (a pipe and a broker connection per worker)."""
    if requested:
        return requested
    return max(1, min(rows, fitting_workers(_available_memory(), _descriptors())))


def fitting_workers(available: int | None, descriptors: int | None) -> int:
    """How many waiting workers fit in ``available`` bytes and ``descriptors`` open files
    (None: unknown)."""
    by_memory = FALLBACK_WORKERS if available is None else available * 3 // 4 // WORKER_MEMORY
    by_files = MAX_WORKERS if descriptors is None else (descriptors - 64) // 4
    return max(1, min(by_memory, by_files, MAX_WORKERS))


def _descriptors() -> int | None:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def _available_memory() -> int | None:
    """``MemAvailable`` from /proc/meminfo in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class BrokerRun:
    """The broker of one batch: started before the rows, journaling into the store and manifest."""

    def __init__(
        self,
        manifest: Any,
        *,
        window: float,
        rows: int,
        workers: int,
        progress: Any,
        store: str | None = None,
        resume: bool = False,
    ):
        self.manifest, self.progress = manifest, progress
        self.rows, self.workers, self.finished = rows, workers, 0
        self._lock = threading.Lock()
        self.job = str(Path(manifest.path).parent)  # the output folder names the job
        self.store = _open_store(store)
        recorded = dict(manifest.data.get("provider_batches") or {})
        if self.store is not None:
            if resume:
                recorded = _union(self._stored(), recorded)
                manifest.data["provider_batches"] = recorded  # a lost manifest gets them back
            else:
                self._forget()
        self.broker = Broker(
            window=window,
            in_flight=self.in_flight,
            journal=self.journal,
            recorded=recorded,
            on_event=self.event,
        )
        if recorded:
            n = sum(len(e.get("requests", {})) for e in recorded.values())
            print(
                f"nbconductor: resuming: {len(recorded)} provider batch(es) with {n} requests "
                "already submitted are collected, not sent again",
                file=sys.stderr,
            )

    def in_flight(self) -> int:
        return max(0, min(self.workers, self.rows - self.finished))

    def row_done(self) -> None:
        with self._lock:
            self.finished += 1

    def _stored(self) -> dict[str, dict]:
        from ..store._batches import recorded_batches

        try:
            return recorded_batches(self.store, self.job)
        except Exception as exc:  # noqa: BLE001 - the manifest may still hold them
            _warn(f"the store's provider batches could not be read ({exc})")
            return {}

    def _forget(self) -> None:
        from ..store._batches import forget_batches

        try:
            forget_batches(self.store, self.job)
        except Exception as exc:  # noqa: BLE001 - a fresh run goes on without
            _warn(f"the store's earlier provider batches of this folder stay ({exc})")

    def journal(self, batch_id: str, entry: dict) -> None:
        """Record a submitted (or collected) batch in the store, then in the manifest."""
        if self.store is not None:
            from ..store._batches import record_batch

            try:
                record_batch(self.store, self.job, batch_id, entry)
            except Exception as exc:  # noqa: BLE001 - the manifest still holds it
                _warn(f"provider batch {batch_id} not recorded in the store ({exc})")
        with self.manifest._lock:
            self.manifest.data.setdefault("provider_batches", {})[batch_id] = entry
            self.manifest.write()

    def event(self, text: str) -> None:
        line = self.broker.line()
        bar = getattr(self.progress, "bar", None)
        if bar is not None:
            bar.set_postfix_str(line, refresh=True)
        else:
            print(f"nbconductor: {text} ({line})", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[Broker]:
        address = self.broker.start()
        try:
            with environ({BROKER_ENV: address}):
                yield self.broker
        finally:
            self.broker.stop()
            if self.store is not None:
                self.store.close()
            b = self.broker
            print(
                f"nbconductor: provider batches: {len(b.batches)} submitted, "
                f"{b.reused} call(s) collected from earlier batches; {b.line()}",
                file=sys.stderr,
            )


def _open_store(target: str | None) -> Any:
    if not target:
        return None
    from ..store._base import connect

    try:
        return connect(target)
    except ConductorError as exc:
        _warn(f"provider batches are journaled in the manifest only ({exc})")
        return None


def _union(stored: dict[str, dict], journaled: dict[str, dict]) -> dict[str, dict]:
    """Batches from the store and the manifest; for one in both, the one that was collected."""
    out = dict(stored)
    for bid, entry in journaled.items():
        if bid not in out or ("collected" in entry and "collected" not in out[bid]):
            out[bid] = entry
    return out


def _warn(text: str) -> None:
    print(f"nbconductor: {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ --dry-run


def dry_run(notebook: Path, rows: list[dict[str, Any]]) -> str:
    """The estimate of ``--provider-batch --dry-run``: calls, batch cost, saving; sends nothing.

    Counts each row's first attempts and judge calls as ``%conductor run --dry-run`` does
    (`nbconductor._plan`; retries come on top) and prices them at the direct and the batch
    price (providers without a batch API at their direct price).
    """
    from .. import Pipeline
    from .._notebook import load_pipeline
    from .._plan import plan
    from .._pricing import BATCH_SHARE, price_for
    from .._summary import fmt_cost

    pipeline = load_pipeline(Pipeline, notebook, run_code=False, store=":memory:")
    calls, judged, direct, batched = 0, 0, 0.0, 0.0
    by_provider: dict[str, int] = {}
    try:
        for row in rows:
            for step in plan(pipeline, {**pipeline.namespace, **row}, None):
                if not step["calls"] or not step["model"]:
                    continue
                ref = pipeline.pool.resolve(step["model"])
                share = 1.0
                if _batchable(ref):
                    price = price_for(ref, pipeline.config)
                    share = price.batch if price and price.batch is not None else BATCH_SHARE
                calls += step["calls"]
                judged += step.get("judge_calls", 0)
                by_provider[ref.provider] = by_provider.get(ref.provider, 0) + step["calls"]
                cost = step["cost"]
                direct = None if cost is None or direct is None else direct + cost
                batched = None if cost is None or batched is None else batched + cost * share
    finally:
        pipeline.close()
    saving = None if direct is None or batched is None else direct - batched
    providers = ", ".join(f"{p} {n}" for p, n in sorted(by_provider.items())) or "none"
    return (
        f"dry run (--provider-batch): {len(rows)} rows, {calls} model calls ({judged} of them "
        f"judge calls; by step model: {providers}; retries on top); estimated cost "
        f"{fmt_cost(batched)} at batch prices vs {fmt_cost(direct)} direct, saving "
        f"{fmt_cost(saving)}. Nothing was sent."
    )


def _batchable(ref: Any) -> bool:
    from ..providers import registry

    return bool(getattr(registry.get(ref.provider), "supports_batch", False))
