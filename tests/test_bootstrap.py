"""tools/bootstrap.sh: the Python check, the platform flags and what each installs, run against a stand-in
interpreter that records the pip commands it is given (nothing is installed)."""

import os
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Answers the version probe with $FAKE_VERSION, "creates" a venv by copying itself, and logs every other call;
# the CPU torch probe fails until torch has been "installed".
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = -c ]; then
  case "$2" in
    *version_info*) echo "$FAKE_VERSION" ;;
    *torch*) grep -q "install -q .*torch==" "$FAKE_LOG" 2> /dev/null ;;
  esac
  exit
fi
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; exit; fi
echo "$*" >> "$FAKE_LOG"
"""


def bootstrap(tmp_path, *args, version="3.11"):
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), VENV=str(tmp_path / "venv"), FAKE_VERSION=version,
               FAKE_LOG=str(tmp_path / "log"))
    result = subprocess.run(["bash", "tools/bootstrap.sh", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    log = (tmp_path / "log").read_text().splitlines() if (tmp_path / "log").exists() else []
    return result, log


@pytest.mark.parametrize("flag, jax_line", [("--cpu", None), ("--tpu", "jax[tpu]==0.10.2"),
                                            ("--cuda12", "jax[cuda12]==0.10.2")])
def test_each_platform_installs_its_jax_and_the_cpu_torch(tmp_path, flag, jax_line):
    result, log = bootstrap(tmp_path, flag)
    assert result.returncode == 0, result.stderr
    assert log[0] == "-m pip install -q --upgrade pip"
    assert log[1] == "-m pip install -q --retries 2 torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    assert log[2] == "-m pip install -q -e .[test]"
    installs = [line for line in log if line.startswith("-m pip install") and "jax" in line]
    assert installs == ([f"-m pip install -q {jax_line}"] if jax_line else [])
    removed = " ".join(line for line in log if "uninstall" in line)
    assert ("libtpu" in removed) == (flag != "--tpu") and ("jax-cuda12-plugin" in removed) == (flag != "--cuda12")
    assert f"for {flag[2:]}" in result.stdout

    again, log = bootstrap(tmp_path, flag)  # idempotent: the venv and the CPU torch are kept (the log accumulates)
    assert again.returncode == 0
    assert sum("--upgrade pip" in line for line in log) == 1 and sum("torch==" in line for line in log) == 1
    assert sum(line == "-m pip install -q -e .[test]" for line in log) == 2


def test_default_is_cpu_and_beam_gets_its_own_venv_without_torch(tmp_path):
    result, log = bootstrap(tmp_path, "beam")
    assert result.returncode == 0, result.stderr
    assert "-m pip install -q -e .[beam_test]" in log and not any("torch" in line for line in log)
    assert not any("jax[" in line for line in log)


def test_setup_pins_the_jax_the_script_installs():
    pin = re.search(r'"jax==([\d.]+)"', (ROOT / "setup.py").read_text()).group(1)
    assert f"JAX_VERSION={pin} " in (ROOT / "tools" / "bootstrap.sh").read_text()


@pytest.mark.parametrize("args, version, message", [
    ((), "3.10", "needs Python >= 3.11, but "),
    ((), "2.7", "needs Python >= 3.11, but "),
    (("--rocm",), "3.11", "unknown argument '--rocm'; usage: bash tools/bootstrap.sh [--cpu | --tpu | --cuda12]"),
])
def test_refuses_an_old_python_or_an_unknown_flag_in_one_line(tmp_path, args, version, message):
    result, log = bootstrap(tmp_path, *args, version=version)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert log == [] and not (tmp_path / "venv").exists()
