"""The one IPython shell every test in a process shares, made to look like a fresh kernel."""

from __future__ import annotations

from IPython.core.interactiveshell import InteractiveShell

from nbconductor.notebook._magics import ConductorMagics


def new_magics(shell: InteractiveShell) -> ConductorMagics:
    """A new magics object (and pipeline) registered on ``shell``, as a new kernel would have."""
    magics = ConductorMagics(shell)
    shell.register_magics(magics)
    shell.user_ns["__nbconductor__"] = magics
    return magics


def fresh_shell(tmp_path, monkeypatch) -> InteractiveShell:
    """The shared shell with an empty namespace, nbconductor loaded with a new pipeline, the
    store in ``tmp_path`` and the working directory there."""
    monkeypatch.setenv("NBCONDUCTOR_STORE", str(tmp_path / "store.sqlite"))
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell.instance()
    # Another test may have started a terminal shell, whose formatter emits text/plain only.
    monkeypatch.setattr(
        shell.display_formatter, "active_types", shell.display_formatter.format_types
    )
    shell.user_ns.clear()
    shell.init_user_ns()
    shell.history_manager.reset()
    shell.run_line_magic("load_ext", "nbconductor")
    new_magics(shell)
    return shell
