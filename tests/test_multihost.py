"""Two CPU processes join one run and feed per-host batches into global arrays."""

import pathlib
import socket
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from geor_jax import sharding
    from geor_jax.data import pipeline

    port, process_id = sys.argv[1], int(sys.argv[2])
    index, count = sharding.initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    mesh = sharding.make_mesh(fsdp=-1)
    # This host's half of a global batch of 4: rows tagged with the host.
    host_batch = {key: np.zeros((2, 3), np.int32) for key in pipeline.DEVICE_KEYS}
    host_batch["pixel_values"] = np.zeros((2 * 4, 5), np.float32)
    host_batch["image_grid_thw"] = np.tile(np.array([[1, 2, 2]], np.int32), (2, 1))
    host_batch["lat"] = np.full(2, 10.0 * (process_id + 1), np.float32)
    host_batch["lon"] = np.zeros(2, np.float32)
    host_batch["example_mask"] = np.ones(2, np.int32)
    host_batch.update({key: np.array(["x", "y"]) for key in pipeline.HOST_KEYS})
    batch = pipeline.to_global(host_batch, mesh)
    total = float(jax.jit(jnp.sum)(batch.arrays["lat"]))
    # Native batches: each host sorted its own shard, so its slot and prompt width differ; they agree on the widest.
    slot, width = 8 + 4 * process_id, 5 + process_id
    native = dict(host_batch, pixel_values=np.ones((2, slot, 5), np.float32),
                  prompt_tokens=np.ones((2, width), np.int32), prompt_mask=np.ones((2, width), np.int32),
                  target_tokens=np.ones((2, 3), np.int32), target_mask=np.ones((2, 3), np.int32))
    placed = pipeline.to_global(pipeline.agree_native_shapes(native, pad_id=0), mesh)
    pixels = float(jax.jit(jnp.sum)(placed.arrays["pixel_values"]))
    print(f"process {index}/{count} devices {jax.device_count()} shape {batch.arrays['lat'].shape} sum {total} "
          f"native {placed.arrays['pixel_values'].shape} {placed.arrays['prompt_tokens'].shape} {pixels}")
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_build_one_global_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    workers = [
        subprocess.Popen([sys.executable, str(script), str(port), str(i)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=240) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    lines = sorted(out.strip().splitlines()[-1] for out, _ in outputs)
    # 2 hosts x 2 devices; the global lat column holds both hosts' rows: 2*10 + 2*20. Native slots of 8 and 12
    # patches and prompts of 5 and 6 tokens became 12 and 6 on both: the ones stay, (2*8 + 2*12) * 5 = 200.
    assert lines == [f"process {i}/2 devices 4 shape (4,) sum 60.0 native (4, 12, 5) (4, 6) 200.0" for i in range(2)]
