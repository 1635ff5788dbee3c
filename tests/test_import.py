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
        "print(','.join(m for m in ('anthropic', 'openai', 'ipywidgets', 'papermill') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
