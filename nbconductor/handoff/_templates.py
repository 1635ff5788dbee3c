"""``nbconductor new TEMPLATE PATH``: start a notebook from ``templates/``."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# `nbconductor/templates` links to the repository's `templates/`; a wheel carries the files.
TEMPLATES_DIR = Path(__file__).parent.parent / "templates"


def available() -> list[str]:
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.ipynb"))


def new_from_template(template: str, path: str) -> int:
    """Copy a template notebook to ``path``; returns an exit status."""
    source = TEMPLATES_DIR / f"{template.removesuffix('.ipynb')}.ipynb"
    if not source.is_file():
        names = ", ".join(available()) or "none found"
        print(f"nbconductor: no template named {template!r}; templates: {names}", file=sys.stderr)
        return 2
    target = Path(path)
    if target.suffix != ".ipynb":
        target = target.with_suffix(".ipynb")
    if target.exists():
        print(f"nbconductor: {target} already exists; choose another path", file=sys.stderr)
        return 2
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    print(f"nbconductor: created {target} from the {source.stem} template; open it in JupyterLab")
    return 0
