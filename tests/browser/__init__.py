"""Browser tests: a real JupyterLab / Notebook 7 in Chromium (a package, so its conftest
does not shadow tests/conftest.py as the module ``conftest``)."""
