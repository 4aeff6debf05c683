"""The package as a user meets it: pip install ./clients/python into a
fresh virtualenv, then import; and a source distribution that carries the
tests."""

import os
import shutil
import subprocess
import sys
import tarfile

import pytest

HERE = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def test_pip_install_into_a_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # A copy, as a user's checkout: pip builds in the tree it is given.
    src = str(tmp_path / "clients-python")
    shutil.copytree(HERE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", src], check=True)
    out = subprocess.run(
        [python, "-c", "import memcachedlock; print(memcachedlock.__version__); print(memcachedlock.__file__)"],
        cwd=str(tmp_path), check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout.split()
    assert out[0] == "0.2.0"
    assert out[1].startswith(str(venv))  # the installed copy, not this checkout
    deps = subprocess.run([python, "-m", "pip", "show", "memcachedlock"], check=True,
                          stdout=subprocess.PIPE, universal_newlines=True).stdout
    requires = [line for line in deps.splitlines() if line.startswith("Requires:")]
    assert requires == ["Requires: "] or requires == ["Requires:"]  # no runtime dependencies


def test_source_distribution_carries_the_tests(tmp_path):
    pytest.importorskip("setuptools", minversion="64", reason="the test extra brings setuptools>=64")
    # The PEP 517 hook itself, as pip or build would call it.
    subprocess.run([sys.executable, "-c",
                    "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))",
                    str(tmp_path)], cwd=HERE, check=True, stdout=subprocess.DEVNULL)
    (sdist,) = [p for p in os.listdir(str(tmp_path)) if p.endswith(".tar.gz")]
    with tarfile.open(str(tmp_path / sdist)) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for path in ("pyproject.toml", "memcachedlock/decorators.py", "tests/conftest.py",
                 "tests/test_decorators.py", "tests/test_zodb.py", "bench/zodb_bench.py",
                 "bench/zcatalog_bench.py"):
        assert path in names
