"""The suite keeps to its temporary directories: nothing lands in the user's Jupyter or IPython dirs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HOME = Path.home()
TMP = Path(tempfile.gettempdir()).resolve()


def _inside(path: str | Path, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root)


def test_jupyter_and_ipython_dirs_are_temporary_for_the_session_and_its_children():
    code = (
        "import json; from jupyter_core import paths; from IPython.paths import get_ipython_dir;"
        "print(json.dumps([paths.jupyter_data_dir(), paths.jupyter_runtime_dir(), get_ipython_dir()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    for path in json.loads(out.stdout):
        assert _inside(path, TMP), path
        assert not _inside(path, HOME / ".local") and not _inside(path, HOME / ".ipython"), path


def test_browser_servers_get_their_own_data_dir(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "_browser_conftest", Path(__file__).parent / "browser" / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    env = module._isolated_env(tmp_path)
    for var in ("JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR"):
        assert _inside(env[var], tmp_path.resolve()), var
    assert os.environ["JUPYTER_DATA_DIR"] != env["JUPYTER_DATA_DIR"]
