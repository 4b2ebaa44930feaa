"""Two CPU processes join one run: per-host batches feed global arrays; evaluation covers every example once."""

import pathlib
import socket
import subprocess
import sys
import textwrap

import process_env
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = sys.argv[3]
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
        subprocess.Popen([sys.executable, str(script), str(port), str(i), process_env.xla_flags(2)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=240) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    lines = sorted(out.strip().splitlines()[-1] for out, _ in outputs)
    # 2 hosts x 2 devices; the global lat column holds both hosts' rows: 2*10 + 2*20. Native slots of 8 and 12
    # patches and prompts of 5 and 6 tokens became 12 and 6 on both: the ones stay, (2*8 + 2*12) * 5 = 200.
    assert lines == [f"process {i}/2 devices 4 shape (4,) sum 60.0 native (4, 12, 5) (4, 6) 200.0" for i in range(2)]


@pytest.mark.slow
def test_two_processes_evaluate_every_example_once_as_one_process_does(tmp_path):
    """launch/evaluate.py on 2 processes x 2 devices and on 1 process x 4 (the same data=4 mesh): the 11
    test images (not a multiple of the batch of 4, nor of the 2 hosts) are all evaluated exactly once,
    process 0 writes every host's predictions in record order, and the metrics are the same."""
    import json

    from geor_jax.data import builder, demo_world
    from geor_jax.data import tokenizer as tokenizer_lib
    import tiny_policy

    tokenizer_lib.build_demo_tokenizer(tmp_path / "tok", vocab_size=512, texts=tokenizer_lib.demo_corpus(500))
    records, _ = demo_world.build_demo_records(str(tmp_path / "data"), str(tmp_path / "src"), num_images=11,
                                               seed=1, height=56, width=56, split="test")
    tiny_policy.save_for_tokenizer(tmp_path / "tok", tmp_path / "hf")
    args = ["launch/evaluate.py", "--config=configs/demo.py:sft", f"--hf_dir={tmp_path / 'hf'}", "--name=tiny",
            f"--config.data.tokenizer_dir={tmp_path / 'tok'}", f"--config.eval.records_dir={records}",
            "--config.mesh.data=-1", "--config.mesh.fsdp=1", "--config.eval.batch_size=4",
            "--config.eval.num_examples=0", "--config.eval.max_new_tokens=6", "--config.train.compilation_cache_dir="]

    def start(devices: int, output: str, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, *args, f"--output_dir={tmp_path / output}", *extra], cwd=ROOT,
                                env=process_env.launched(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    port = free_port()
    runs = [start(2, "two", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}")
            for i in range(2)] + [start(4, "one")]
    errors = []
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
        errors.append(err)
    done = "evaluation: 11/11 examples (100.0%) in "  # the progress summary, from process 0 only
    assert done in errors[0] and done in errors[2] and "evaluation:" not in errors[1]

    source = builder.open_records(records, "test")
    ids = [source[i]["id"].decode() for i in range(len(source))]
    metrics = {name: json.loads((tmp_path / name / "metrics.json").read_text())["tiny"] for name in ("two", "one")}
    assert metrics["two"]["count"] == 11 and metrics["two"] == metrics["one"]
    predictions = {name: (tmp_path / name / "predictions.csv").read_text().splitlines() for name in ("two", "one")}
    assert [row.split(",")[0] for row in predictions["two"][1:]] == ids  # each once, in record order
    assert predictions["two"] == predictions["one"]
