"""The grain input pipeline: CoR records -> static-shape, sharded Qwen2.5-VL batches.

Reads records built by ``geor_jax.data.builder`` through ``tfds``'s
ArrayRecord data source (no TensorFlow) with a grain ``DataLoader``: seeded
shuffle over a per-host shard, decode, resize every image of a batch to one
configured resolution bucket, cut Qwen2.5-VL patches, tokenize the chat
prompt (+ the CoR answer), pad to static lengths, and place the result on a
mesh as global ``jax.Array``s. The iterator state is a small bytes blob:
restoring it yields exactly the batches an uninterrupted run would have.

Batch format (``Batch``; B = per-step global batch, N = patches per image,
P = ``max_prompt_len``, T = ``max_target_len``, D = 3 * temporal_patch *
patch**2 = 1176)::

    arrays (device; global jax.Arrays when a mesh is given, else numpy)
      prompt_tokens   int32   (B, P)    chat prompt, LEFT-padded with <|endoftext|>
      prompt_mask     int32   (B, P)    1 on real prompt tokens
      target_tokens   int32   (B, T)    CoR answer + <|im_end|>, RIGHT-padded
      target_mask     int32   (B, T)    1 on real target tokens (incl. <|im_end|>)
      pixel_values    float32 (B*N, D)  image i's patches are rows [i*N, (i+1)*N)
      lat, lon        float32 (B,)      ground truth, degrees (rounded: JAX runs without x64)
      example_mask    int32   (B,)      0 on padding examples (only a last eval batch)
    grid_thw          tuple (1, H/14, W/14), the batch's bucket: static, hashable
    host (numpy, never sent to devices; this host's examples only)
      id, country, country_code, state, city, answer   str (B_host,)
      lat, lon        float64 (B_host,) ground truth exactly as the records hold it

Each prompt holds exactly one image span ``<|vision_start|>`` + grid_t*grid_h*
grid_w / merge_size**2 ``<|image_pad|>`` + ``<|vision_end|>``. Because prompts
are left-padded, real tokens of all prompts end at column P-1, so generation
appends at the same column for every row; positions (M-RoPE's 3-D ones
included) must be computed over attended tokens only, as transformers'
``get_rope_index`` does with the attention mask, never from the column index.
"""

import dataclasses
import io
import logging
from collections.abc import Sequence

import grain.python as grain
import jax
import numpy as np
import PIL.Image
from jax.sharding import NamedSharding, PartitionSpec

from geor_jax import config_fields
from geor_jax.data import builder, host_slices, patches, prompts
from geor_jax.data import tokenizer as tokenizer_lib
from geor_jax.rollout import Prompts

DEVICE_KEYS = ("prompt_tokens", "prompt_mask", "target_tokens", "target_mask", "pixel_values", "lat", "lon",
               "example_mask")
HOST_KEYS = ("id", "country", "country_code", "state", "city", "answer")
COORDINATE_KEYS = ("lat", "lon")  # float64 in host batches and Batch.host; float32 on devices


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything that fixes the batches (and so must match when resuming).

    In a run config this is the ``data`` section; ``shuffle``, ``num_epochs``
    and ``drop_remainder`` are set by the code that builds a training or an
    evaluation pipeline, not by config files.
    """

    records_dir: str = ""  # both must be set to read (the run config checks it up front)
    tokenizer_dir: str = ""
    split: str = "train"
    global_batch_size: int = config_fields.field(16, config_fields.at_least(1))
    buckets: tuple[tuple[int, int], ...] = config_fields.field(  # (height, width), multiples of patch * merge
        ((224, 224),), lambda b: None if b else "needs at least one (height, width) bucket")
    max_prompt_len: int = config_fields.field(192, config_fields.at_least(1))
    max_target_len: int = config_fields.field(64, config_fields.at_least(1))
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = config_fields.field(None, config_fields.at_least(1))  # None: repeat forever
    drop_remainder: bool = True  # False: every record once across hosts, the last batch padded (example_mask 0)
    worker_count: int = config_fields.field(0, config_fields.at_least(0))  # grain worker processes (need a
    # __main__ guard and parsed absl flags)
    patch: patches.PatchConfig = config_fields.field(patches.PatchConfig())
    prompt: prompts.PromptConfig = config_fields.field(prompts.PromptConfig())

    def __post_init__(self):
        config_fields.check(self)
        for bucket in self.buckets:
            if any(side < 1 or side % self.patch.factor for side in bucket):
                raise config_fields.ConfigError("PipelineConfig.buckets", f"{bucket}: sides must be positive "
                                                f"multiples of patch_size x merge_size = {self.patch.factor}")


@dataclasses.dataclass
class Batch:
    """One step's data: device arrays, the static image grid, and host-side strings."""

    arrays: dict
    grid_thw: tuple[int, int, int]
    host: dict[str, np.ndarray]

    def prompts(self) -> Prompts:
        """The batch's image prompts (one image each, all of the batch's grid)."""
        a = self.arrays
        return Prompts(a["prompt_tokens"], a["prompt_mask"], a["pixel_values"],
                       (self.grid_thw,) * a["prompt_tokens"].shape[0])


class DecodeRecord(grain.MapTransform):
    """grain map: raw record -> RGB uint8 image plus plain Python fields."""

    def map(self, record):
        """Decode the JPEG to RGB and turn bytes fields into str."""
        with PIL.Image.open(io.BytesIO(record["image"])) as image:
            pixels = np.asarray(image.convert("RGB"))
        out = {"image": pixels, "lat": float(record["lat"]), "lon": float(record["lon"]),
               "padding": bool(record.get(host_slices.PADDING_KEY, False))}
        for key in HOST_KEYS:
            value = record[key]
            out[key] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        return out


class Collate:
    """grain batch_fn: a list of decoded examples -> one static-shape host batch (numpy dict).

    Picklable (loads its tokenizer lazily) so grain worker processes can run it.
    """

    def __init__(self, config: PipelineConfig, host_batch_size: int):
        self.config = config
        self.host_batch_size = host_batch_size
        self._tokenizer = None
        self._prompt_cache: dict[tuple[int, int], list[int]] = {}

    def __getstate__(self):
        return {"config": self.config, "host_batch_size": self.host_batch_size}

    def __setstate__(self, state):
        self.__init__(state["config"], state["host_batch_size"])

    @property
    def tokenizer(self) -> tokenizer_lib.Tokenizer:
        """The tokenizer, loaded on first use in whichever process runs the collate."""
        if self._tokenizer is None:
            self._tokenizer = tokenizer_lib.load_tokenizer(self.config.tokenizer_dir)
        return self._tokenizer

    def prompt_ids(self, bucket: tuple[int, int]) -> list[int]:
        """Token ids of the (identical) prompt of every image in ``bucket``."""
        if bucket not in self._prompt_cache:
            grid = (1, bucket[0] // self.config.patch.patch_size, bucket[1] // self.config.patch.patch_size)
            count = patches.num_image_tokens(grid, self.config.patch.merge_size)
            self._prompt_cache[bucket] = self.tokenizer.encode(prompts.render_prompt(count, self.config.prompt))
        return self._prompt_cache[bucket]

    def __call__(self, examples: Sequence[dict]) -> dict:
        """Resize to the batch's bucket, patchify, tokenize and pad; short batches are padded."""
        config, batch_size = self.config, self.host_batch_size
        real = len(examples)
        examples = list(examples) + [examples[-1]] * (batch_size - real)  # pad a short last batch
        bucket = patches.choose_bucket([e["image"].shape[1] / e["image"].shape[0] for e in examples[:real]],
                                       config.buckets)
        pixel_values, grids = [], set()
        for example in examples:
            values, grid = patches.image_to_patches(patches.resize(example["image"], *bucket), config.patch)
            pixel_values.append(values)
            grids.add(grid)
        (grid,) = grids
        special = self.tokenizer.special_ids
        P, T = config.max_prompt_len, config.max_target_len
        prompt = self.prompt_ids(bucket)
        if len(prompt) > P:
            raise ValueError(f"prompt for bucket {bucket} is {len(prompt)} tokens > max_prompt_len {P}")
        prompt_tokens = np.full((batch_size, P), special.pad, np.int32)
        prompt_mask = np.zeros((batch_size, P), np.int32)
        prompt_tokens[:, P - len(prompt):] = prompt
        prompt_mask[:, P - len(prompt):] = 1
        targets = self.tokenizer.encode_batch([prompts.render_target(e["answer"]) for e in examples])
        target_tokens = np.full((batch_size, T), special.pad, np.int32)
        target_mask = np.zeros((batch_size, T), np.int32)
        for row, ids in enumerate(targets):
            if len(ids) > T:
                logging.warning("target of %s is %d tokens, truncated to max_target_len %d",
                                examples[row]["id"], len(ids), T)
                ids = ids[:T]
            target_tokens[row, : len(ids)] = ids
            target_mask[row, : len(ids)] = 1
        example_mask = np.array([i < real and not e["padding"] for i, e in enumerate(examples)], np.int32)
        batch = {
            "prompt_tokens": prompt_tokens,
            "prompt_mask": prompt_mask,
            "target_tokens": target_tokens,
            "target_mask": target_mask,
            "pixel_values": np.concatenate(pixel_values, axis=0),
            "image_grid_thw": np.tile(np.asarray(grid, np.int32), (batch_size, 1)),
            "lat": np.asarray([e["lat"] for e in examples], np.float64),
            "lon": np.asarray([e["lon"] for e in examples], np.float64),
            "example_mask": example_mask,
        }
        for key in HOST_KEYS:
            batch[key] = np.asarray([e[key] for e in examples], dtype=np.str_)
        return batch


def check_prompt_lengths(config: PipelineConfig, tokenizer: tokenizer_lib.Tokenizer | None = None) -> dict:
    """Check up front that every bucket's prompt fits ``max_prompt_len``; returns {bucket: prompt tokens}."""
    collate = Collate(config, 1)
    if tokenizer is not None:
        collate._tokenizer = tokenizer
    lengths = {}
    for bucket in config.buckets:
        lengths[tuple(bucket)] = len(collate.prompt_ids(tuple(bucket)))
        if lengths[tuple(bucket)] > config.max_prompt_len:
            raise ValueError(f"bucket {bucket} needs a {lengths[tuple(bucket)]}-token prompt; "
                             f"raise max_prompt_len above {config.max_prompt_len}")
    return lengths


def _split(host_batch: dict) -> tuple[dict, tuple[int, int, int], dict]:
    """(device-bound numpy arrays, grid_thw, host arrays) of a collated host batch.

    Coordinates go both ways: float32 for the devices (the reward's
    Haversine), float64 for the host (evaluation, reports).
    """
    arrays = {key: np.asarray(host_batch[key], np.float32) if key in COORDINATE_KEYS else host_batch[key]
              for key in DEVICE_KEYS}
    host = {key: host_batch[key] for key in HOST_KEYS}
    host.update({key: np.asarray(host_batch[key], np.float64) for key in COORDINATE_KEYS})
    return arrays, tuple(int(v) for v in host_batch["image_grid_thw"][0]), host


def _batch_axes(mesh) -> tuple[str, ...]:
    """Mesh axes the batch dimension is split over: data and fsdp where present."""
    axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    return axes or (mesh.axis_names[0],)


def to_global(host_batch: dict, mesh, batch_axes: Sequence[str] | None = None) -> Batch:
    """Place a host batch on ``mesh`` as global arrays split along the batch over ``batch_axes``.

    Works on one or many hosts (``jax.make_array_from_process_local_data``):
    each host passes its own slice; the global batch is all hosts' slices.
    """
    axes = tuple(batch_axes) if batch_axes is not None else _batch_axes(mesh)
    sharding = NamedSharding(mesh, PartitionSpec(axes))
    arrays, grid_thw, host = _split(host_batch)
    return Batch({key: jax.make_array_from_process_local_data(sharding, value) for key, value in arrays.items()},
                 grid_thw, host)


class GeoBatchIterator:
    """Iterator of ``Batch``es with checkpointable state (``get_state``/``set_state``).

    Without a mesh the arrays stay numpy (host batch); with one they are
    global ``jax.Array``s. ``grain_iterator`` is the underlying grain
    iterator, for orbax's ``grain.python.PyGrainCheckpointHandler``.
    """

    def __init__(self, config: PipelineConfig, mesh=None, batch_axes: Sequence[str] | None = None):
        self.config, self.mesh, self.batch_axes = config, mesh, batch_axes
        processes = jax.process_count()
        if config.global_batch_size % processes:
            raise ValueError(f"global_batch_size {config.global_batch_size} not divisible by {processes} hosts")
        host_batch_size = config.global_batch_size // processes
        source = builder.open_records(config.records_dir, config.split)
        self.num_records = len(source)
        shard, shuffle = grain.ShardByJaxProcess(drop_remainder=True), config.shuffle
        if not config.drop_remainder:  # evaluation: every record once across hosts, the last batch padded
            order = np.random.default_rng(config.seed).permutation(len(source)) if shuffle else None
            source = host_slices.PaddedHostSlices(source, host_batch_size, jax.process_index(), processes, order)
            shard, shuffle = grain.NoSharding(), False
        sampler = grain.IndexSampler(
            num_records=len(source),
            shard_options=shard,
            shuffle=shuffle,
            num_epochs=config.num_epochs,
            seed=config.seed,
        )
        self.loader = grain.DataLoader(
            data_source=source,
            sampler=sampler,
            operations=[DecodeRecord(),
                        grain.Batch(host_batch_size, drop_remainder=config.drop_remainder,
                                    batch_fn=Collate(config, host_batch_size))],
            worker_count=config.worker_count,
        )
        self.grain_iterator = iter(self.loader)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        """The next batch (global arrays if a mesh was given)."""
        host_batch = next(self.grain_iterator)
        if self.mesh is not None:
            return to_global(host_batch, self.mesh, self.batch_axes)
        return Batch(*_split(host_batch))

    def get_state(self) -> bytes:
        """Where the iterator is (which records come next); small, JSON bytes."""
        return self.grain_iterator.get_state()

    def set_state(self, state: bytes) -> None:
        """Continue from a state ``get_state`` returned (same config required)."""
        self.grain_iterator.set_state(state)


def make_iterator(config: PipelineConfig, mesh=None, state: bytes | None = None,
                  batch_axes: Sequence[str] | None = None) -> GeoBatchIterator:
    """Build the batch iterator, checking the config first; resume from ``state`` if given."""
    check_prompt_lengths(config)
    iterator = GeoBatchIterator(config, mesh, batch_axes)
    if state is not None:
        iterator.set_state(state)
    return iterator
