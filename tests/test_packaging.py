"""The install: a wheel carries maefast._C, maefast.kernels and the recipes; imports work anywhere."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_extension_kernels_and_recipes(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, cwd=tmp_path, capture_output=True)
    wheel = next(tmp_path.glob("maefast-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "maefast/kernels/__init__.py" in names
    assert any(n.startswith("maefast/_C") and n.endswith(".so") for n in names)
    assert "maefast/recipes/debug.yaml" in names
    assert not any(n.startswith(("kernels/", "tests/", "benchmarks/")) for n in names)


def test_kernels_import_from_any_directory(tmp_path):
    code = "import maefast.kernels, maefast; print(maefast.kernels.__name__)"
    for cwd in (tmp_path, ROOT):
        result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.strip() == "maefast.kernels", result.stderr
