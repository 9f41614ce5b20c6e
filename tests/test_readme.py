from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    ci_command = [line for line in ci_lines if line.startswith("python -m pip install")]
    assert len(ci_command) == 1
    assert f"```bash\n{ci_command[0]}\n```" in (ROOT / "README.md").read_text()
