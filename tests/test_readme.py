from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    """.ci/run runs, verbatim, the README's block of what CI runs (marked no-run: the snippet test does not install)."""
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    ci_command = [line for line in ci_lines if line.startswith("python -m pip install")]
    assert len(ci_command) == 1
    assert f"```bash no-run\n{ci_command[0]}\n```" in (ROOT / "README.md").read_text()


def test_the_readme_installs_the_cpu_build_from_pytorchs_index():
    """The general install line is PyTorch's documented CPU route; CI's plain torch==2.13.0 finds a local CPU
    wheel, which a fresh machine's pip would not (it would take PyPI's CUDA build)."""
    text = (ROOT / "README.md").read_text()
    assert "python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu\n" in text
