"""``launch/train.py`` under test probes, for wiring tests of the real run (tests/test_launch.py).

    PROBE_LOG=probe.jsonl [PROBE_KILL_AT_BATCH=k] [PROBE_SCORER=crc] python tests/run_probe.py <train.py flags>

Everything runs as ``launch/train.py`` does; the probes only watch, except
where asked otherwise:

- every training batch drawn appends ``{"ids": [...]}`` to ``PROBE_LOG``;
- every training rollout (not evaluation's) appends ``{"key": ..., "texts": ..., "true_lat": ..., "true_lon": ..., "reward": ...}``;
- ``PROBE_KILL_AT_BATCH=k``: SIGKILL this process as it draws its k-th
  training batch, once the checkpoint of step ``PROBE_KILL_AFTER_SAVE_OF``
  (if set) is on disk: background saves are otherwise not bound to finish on
  a busy machine, and the scenario would silently become a restart from scratch;
- ``PROBE_SCORER=crc``: each completion is scored as the answer
  ``Coordinates: (lat, lon)`` at a point derived from its text's CRC32, by the
  real ``score_completions`` against the true coordinates it is given. Random
  policies then get rewards that differ within groups (a learning signal),
  and the rewards stay a deterministic function of the sampled text.
"""

import json
import os
import runpy
import signal
import sys
import time
import zlib

import jax
import numpy as np

from geor_jax import evaluate, rewards, sampling
from geor_jax.data import pipeline

LOG = os.environ["PROBE_LOG"]
KILL_AT = int(os.environ.get("PROBE_KILL_AT_BATCH", "0"))
SAVED_STEP = os.environ.get("PROBE_KILL_AFTER_SAVE_OF", "")
SCORER = os.environ.get("PROBE_SCORER", "")


def record(**row) -> None:
    with open(LOG, "a") as f:
        f.write(json.dumps(row) + "\n")


drawn = 0
next_batch = pipeline.GeoBatchIterator.__next__


def probed_next(self):
    global drawn
    batch = next_batch(self)
    if self.config.shuffle:  # the training iterator (evaluation reads in order)
        drawn += 1
        if drawn == KILL_AT:
            wait_for_checkpoint()
            os.kill(os.getpid(), signal.SIGKILL)
        record(ids=batch.host["id"].tolist())
    return batch


def wait_for_checkpoint(timeout_s: float = 300) -> None:
    """Until ``<workdir>/checkpoints/<PROBE_KILL_AFTER_SAVE_OF>`` exists (orbax renames a step there when complete)."""
    if not SAVED_STEP:
        return
    workdir = next(arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("--workdir="))
    deadline = time.monotonic() + timeout_s
    while not os.path.isdir(os.path.join(workdir, "checkpoints", SAVED_STEP)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"checkpoint of step {SAVED_STEP} not written within {timeout_s} s")
        time.sleep(0.1)


evaluating = False
evaluate_policy = evaluate.evaluate_policy


def probed_evaluate_policy(*args, **kwargs):
    global evaluating
    evaluating = True
    try:
        return evaluate_policy(*args, **kwargs)
    finally:
        evaluating = False


sample_groups = sampling.sample_groups


def probed_sample_groups(model, prompts, key, *args, **kwargs):
    if not evaluating:
        record(key=np.asarray(jax.random.key_data(key)).tolist())
    return sample_groups(model, prompts, key, *args, **kwargs)


score_completions = rewards.score_completions


def crc_answer(text: str) -> str:
    crc = zlib.crc32(text.encode())
    return f"Coordinates: ({crc % 17 * 10 - 80:.1f}, {crc // 17 % 35 * 10 - 170:.1f})"


def probed_score(texts, true_lat, true_lon, *args, **kwargs):
    scored_texts = [crc_answer(t) for t in texts] if SCORER == "crc" and not evaluating else list(texts)
    scored = score_completions(scored_texts, true_lat, true_lon, *args, **kwargs)
    if evaluating:
        return scored
    record(texts=scored_texts, true_lat=np.asarray(true_lat, np.float64).tolist(),
           true_lon=np.asarray(true_lon, np.float64).tolist(), reward=scored.reward.tolist())
    return scored


pipeline.GeoBatchIterator.__next__ = probed_next
evaluate.evaluate_policy = probed_evaluate_policy
sampling.sample_groups = probed_sample_groups
rewards.score_completions = probed_score

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.argv = [os.path.join(root, "launch", "train.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
