"""launch/gpu.sh and launch/tpu_pod.sh: usage errors and the command they run."""

import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_script_passes_multi_node_flags(tmp_path):
    script = tmp_path / "show_args.py"
    script.write_text("import sys; print(sys.argv[1:])\n")
    env = dict(os.environ, COORDINATOR="node0:1234", NUM_PROCESSES="2", PROCESS_ID="1")
    result = subprocess.run(["bash", "launch/gpu.sh", str(script), "--config=x"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(["--config=x", "--coordinator_address=node0:1234", "--num_processes=2",
                                         "--process_id=1"])
    single = subprocess.run(["bash", "launch/gpu.sh", str(script)], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={k: v for k, v in os.environ.items() if k != "COORDINATOR"})
    assert single.stdout.strip() == "[]"


def test_scripts_print_usage():
    for name, args in (("gpu.sh", []), ("tpu_pod.sh", ["only-a-name"])):
        result = subprocess.run(["bash", f"launch/{name}", *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2 and "usage:" in result.stderr


def test_pod_setup_bootstraps_every_worker_for_tpu(tmp_path):
    gcloud = tmp_path / "gcloud"
    gcloud.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    gcloud.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", REPO_DIR="/srv/geor_jax")
    result = subprocess.run(["bash", "launch/tpu_pod.sh", "pod", "us-east5-a", "--setup"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    remote = "--command=cd /srv/geor_jax && bash tools/bootstrap.sh --tpu"
    assert result.stdout.splitlines()[-2:] == ["--worker=all", remote]
