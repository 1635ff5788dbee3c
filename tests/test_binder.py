from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_binder_environment_installs_the_package_and_lab():
    requirements = (ROOT / "binder/requirements.txt").read_text()
    assert "jupyterlab" in requirements
    post = ROOT / "binder/postBuild"
    assert "pip install" in post.read_text() and post.stat().st_mode & 0o111
