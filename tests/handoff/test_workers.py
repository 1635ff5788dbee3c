"""Warm batch workers: the forkserver imports the job's provider SDKs once, before any row."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from nbconductor._config import Config
from nbconductor.handoff._workers import job_providers


def test_job_providers_reads_model_specs_from_cells_and_config():
    sources = [
        "%%step draft --model anthropic:claude-haiku-4-5 --judge openai:gpt-4.1-mini\nWrite",
        'p.step("t", "x", model="offline:echo")',  # offline has no SDK to warm
        "see https://example.com/a:b and time 10:30",  # not providers
    ]
    assert job_providers(sources) == ["anthropic", "openai"]
    config = Config(default_model="openai:gpt-4.1", aliases={"local": "openai-compatible:qwen"})
    assert job_providers(["%%step a\nhello"], config) == ["openai", "openai-compatible"]
    assert job_providers(["%%step a --model offline:x\nhi"]) == []


WORKER = textwrap.dedent(
    """
    import json, sys
    from nbconductor.handoff._workers import worker_context

    def report(conn):
        conn.send(sorted(m for m in ("anthropic", "openai", "papermill") if m in sys.modules))

    if __name__ == "__main__":
        ctx = worker_context(json.loads(sys.argv[1]))
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=report, args=(child,))
        proc.start()
        print(json.dumps(parent.recv()))
        proc.join()
    """
)


def _warm_modules(tmp_path, providers: list[str]) -> list[str]:
    script = tmp_path / "warm.py"
    script.write_text(WORKER)
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(providers)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_worker_forks_with_the_jobs_sdks_already_imported(tmp_path):
    assert _warm_modules(tmp_path, ["anthropic", "openai"]) == ["anthropic", "openai", "papermill"]


def test_a_job_without_sdk_providers_does_not_import_them(tmp_path):
    assert _warm_modules(tmp_path, []) == ["papermill"]


def test_provider_batch_workers_default_to_one_per_row_as_memory_and_files_allow():
    from nbconductor.handoff._provider_batch import WORKER_MEMORY, fitting_workers, worker_count

    gib = 2**30
    assert (
        fitting_workers(available=16 * gib, descriptors=20_000)
        == 16 * gib * 3 // 4 // WORKER_MEMORY
    )
    assert fitting_workers(available=16 * gib, descriptors=1024) == (1024 - 64) // 4  # files bind
    assert fitting_workers(available=None, descriptors=20_000) == 100  # memory unknown
    assert fitting_workers(available=10 * 2**20, descriptors=20_000) == 1  # always one
    assert worker_count(7, 200) == 7  # --workers wins
    assert worker_count(None, 3) == 3  # never more than rows
