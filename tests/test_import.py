import os
import subprocess
import sys

import nbconductor


def test_import_loads_no_sdk_widgets_or_papermill():
    code = (
        "import sys, nbconductor; "
        "heavy = [m for m in ('anthropic', 'openai', 'ipywidgets', 'anywidget', 'papermill', 'IPython', "
        "'pydantic', 'jinja2', 'networkx', 'httpx') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names_resolve():
    for name in nbconductor.__all__:
        assert getattr(nbconductor, name) is not None
    assert set(dir(nbconductor)) >= set(nbconductor.__all__)


def test_pipeline_use_does_not_load_sdks_for_offline():
    code = (
        "import sys; from nbconductor import Pipeline; p = Pipeline(store=':memory:'); "
        "p.step('a', 'hi {{ x }}', model='offline:m'); p.run({'x': 1}); "
        "print(','.join(m for m in ('anthropic', 'openai', 'ipywidgets', 'papermill', 'psycopg', "
        "'psycopg_pool') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_tracing_off_imports_no_opentelemetry():
    """Off (no OTEL_EXPORTER_OTLP_* endpoint, no [otel], no switch), a run imports none of it."""
    code = (
        "import sys; from nbconductor import Pipeline; p = Pipeline(store=':memory:'); "
        "p.step('a', 'hi {{ x }}', model='offline:m'); p.run({'x': 1}); "
        "print(','.join(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == ""


def test_tracing_on_imports_opentelemetry_only_for_the_run():
    code = (
        "import sys, nbconductor; before = [m for m in sys.modules if m.startswith('opentelemetry')]; "
        "from nbconductor import Pipeline; p = Pipeline(store=':memory:'); "
        "p.step('a', 'hi', model='offline:m'); p.run(); "
        "print(len(before), 'opentelemetry.sdk.trace' in sys.modules)"
    )
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_BSP_EXPORT_TIMEOUT": "100",
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    )
    assert out.stdout.split() == ["0", "True"]
