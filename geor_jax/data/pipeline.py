"""The grain input pipeline: CoR records -> static-shape, sharded Qwen2.5-VL batches.

Reads records built by ``geor_jax.data.builder`` through ``tfds``'s
ArrayRecord data source (no TensorFlow) with a grain dataset: a per-host
shard, a seeded shuffle (a new order each epoch), decode, image sizing,
batching, Qwen2.5-VL patches, the chat-templated prompt (+ the CoR answer),
padding to static shapes, and placement on a mesh as global ``jax.Array``s.
The iterator state is a small bytes blob: restoring it yields exactly the
batches an uninterrupted run would have.

Two ways to size images (``PipelineConfig.resize``):

- ``"native"`` (default): each image as the checkpoint's processor sizes it
  (``patches.process_image``: aspect ratio kept, area within the
  preprocessor_config.json's [min_pixels, max_pixels]), so training sees what
  serving with transformers or vLLM shows the model. Batches hold one image
  per row in a slot of L patches, L one of at most ``num_shapes`` sizes
  fitted to the data (``shapes.fit_slots``); examples are sorted by size
  within windows of ``sort_window`` batches so each batch pads little.
  Prompts are padded to the longest prompt an L-patch image has. One
  compiled shape per slot size.
- ``"bucket"``: every image of a batch resized to one of ``buckets`` (the one
  closest to the batch's median aspect ratio), prompts padded to
  ``max_prompt_len``: one compiled shape per bucket, aspect ratios and pixel
  counts distorted to the bucket's.

Batch format (``Batch``; B = per-step global batch, P = the batch's prompt
width, T = ``max_target_len``, D = 3 * temporal_patch * patch**2 = 1176)::

    arrays (device; global jax.Arrays when a mesh is given, else numpy)
      prompt_tokens   int32   (B, P)    chat prompt, LEFT-padded with <|endoftext|>
      prompt_mask     int32   (B, P)    1 on real prompt tokens
      target_tokens   int32   (B, T)    CoR answer + <|im_end|>, RIGHT-padded
      target_mask     int32   (B, T)    1 on real target tokens (incl. <|im_end|>)
      pixel_values    float32 native: (B, L, D) row r's t*h*w patches first, then zeros
                              bucket: (B*N, D) image i's N patches are rows [i*N, (i+1)*N)
      image_grid_thw  int32   (B, 3)    each row's (t, h, w) grid in patches
      lat, lon        float32 (B,)      ground truth, degrees (rounded: JAX runs without x64)
      example_mask    int32   (B,)      0 on padding examples (only a last eval batch)
    grid_thw          bucket: tuple (1, H/14, W/14), the batch's bucket (static); native: None
    host (numpy, never sent to devices; this host's examples only)
      id, country, country_code, state, city, answer   str (B_host,)
      lat, lon        float64 (B_host,) ground truth exactly as the records hold it

``Batch.prompts()`` is the batch's image prompts as the model, sampler and
steps take them (per-row grids as data for native batches, the bucket's
static grid otherwise). Each prompt holds exactly one image span
``<|vision_start|>`` + t*h*w / merge_size**2 ``<|image_pad|>`` +
``<|vision_end|>``. Because prompts are left-padded, real tokens of all
prompts end at column P-1, so generation appends at the same column for
every row; positions (M-RoPE's 3-D ones included) must be computed over
attended tokens only, as transformers' ``get_rope_index`` does with the
attention mask, never from the column index.
"""

import dataclasses
import functools
import io
import json
import logging
from collections.abc import Sequence

import grain
import jax
import numpy as np
import PIL.Image
from grain.experimental import FlatMapIterDataset, FlatMapTransform
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from geor_jax import config_fields
from geor_jax.data import builder, host_slices, patches, prompts, shapes
from geor_jax.data import tokenizer as tokenizer_lib
from geor_jax.rollout import Prompts

DEVICE_KEYS = ("prompt_tokens", "prompt_mask", "target_tokens", "target_mask", "pixel_values", "image_grid_thw",
               "lat", "lon", "example_mask")
HOST_KEYS = ("id", "country", "country_code", "state", "city", "answer")
COORDINATE_KEYS = ("lat", "lon")  # float64 in host batches and Batch.host; float32 on devices
RESIZE_MODES = ("native", "bucket")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything that fixes the batches (and so must match when resuming).

    In a run config this is the ``data`` section; ``shuffle``, ``num_epochs``,
    ``drop_remainder`` and ``patch`` are set by the code that builds a training
    or an evaluation pipeline, not by config files.

    patch: the image processor settings; None reads ``tokenizer_dir``'s
    preprocessor_config.json (the checkpoint's; Qwen2.5-VL's defaults without
    one). processor: overrides of single settings on top (e.g. ``max_pixels``
    to cap the cost per image). num_shapes / sort_window / shape_sample:
    native sizing's bound on batch shapes (patch slot sizes), batches per
    size-sorted window, and records sampled (evenly over the split) to fit the
    slot sizes. num_records: use only the split's first records (e.g. an
    evaluation subset).
    """

    records_dir: str = ""  # both must be set to read (the run config checks it up front)
    tokenizer_dir: str = ""
    split: str = "train"
    global_batch_size: int = config_fields.field(16, config_fields.at_least(1))
    resize: str = config_fields.field("native", config_fields.one_of(*RESIZE_MODES))
    num_shapes: int = config_fields.field(8, config_fields.at_least(1))
    sort_window: int = config_fields.field(16, config_fields.at_least(1))
    shape_sample: int = config_fields.field(1024, config_fields.at_least(1))
    buckets: tuple[tuple[int, int], ...] = config_fields.field(  # (height, width), multiples of patch * merge;
        ((224, 224),), lambda b: None if b else "needs at least one (height, width) bucket")  # resize="bucket"
    max_prompt_len: int = config_fields.field(192, config_fields.at_least(1))  # bucket; native: the slot's length
    max_target_len: int = config_fields.field(64, config_fields.at_least(1))
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = config_fields.field(None, config_fields.at_least(1))  # None: repeat forever
    drop_remainder: bool = True  # False: every record once across hosts, the last batch padded (example_mask 0)
    num_records: int | None = config_fields.field(None, config_fields.at_least(1))  # None: all
    worker_count: int = config_fields.field(0, config_fields.at_least(0))  # grain worker processes (need a
    # __main__ guard and parsed absl flags)
    patch: patches.PatchConfig | None = None
    processor: patches.ProcessorOverrides = config_fields.field(patches.ProcessorOverrides())
    prompt: prompts.PromptConfig = config_fields.field(prompts.PromptConfig())

    def __post_init__(self):
        config_fields.check(self)
        factor = (self.patch or patches.PatchConfig()).factor  # the checkpoint's is checked again when read
        for bucket in self.buckets:
            if any(side < 1 or side % factor for side in bucket):
                raise config_fields.ConfigError("PipelineConfig.buckets", f"{bucket}: sides must be positive "
                                                f"multiples of patch_size x merge_size = {factor}")


@dataclasses.dataclass
class Batch:
    """One step's data: device arrays, the bucket's static grid (None for native batches), host-side strings."""

    arrays: dict
    grid_thw: tuple[int, int, int] | None
    host: dict[str, np.ndarray]

    def prompts(self) -> Prompts:
        """The batch's image prompts: one image each, with per-row grids (native) or the bucket's grid."""
        a = self.arrays
        if self.grid_thw is None:
            return Prompts(a["prompt_tokens"], a["prompt_mask"], a["pixel_values"], (), a["image_grid_thw"])
        return Prompts(a["prompt_tokens"], a["prompt_mask"], a["pixel_values"],
                       (self.grid_thw,) * a["prompt_tokens"].shape[0])


def patch_config(config: PipelineConfig) -> patches.PatchConfig:
    """``config.patch`` (None: the processor settings of the checkpoint at ``config.tokenizer_dir``), with
    ``config.processor``'s overrides applied."""
    base = config.patch if config.patch is not None else patches.load_patch_config(config.tokenizer_dir)
    return config.processor.apply(base)


@dataclasses.dataclass(frozen=True)
class _Shapes:
    """What the collate needs to know besides the config: the resolved processor settings and slot sizes."""

    patch: patches.PatchConfig
    slots: tuple[int, ...] = ()


def _image_size(image_bytes: bytes) -> tuple[int, int]:
    """(height, width) from an encoded image's header (no pixel decoding)."""
    with PIL.Image.open(io.BytesIO(image_bytes)) as image:
        return image.height, image.width


def fit_slot_sizes(config: PipelineConfig, patch: patches.PatchConfig, source=None) -> tuple[int, ...]:
    """The native batches' patch slot sizes: ``shapes.fit_slots`` over ``config.shape_sample`` records
    taken evenly over the split (the same on every host)."""
    source = builder.open_records(config.records_dir, config.split) if source is None else source
    total = len(source) if config.num_records is None else min(len(source), config.num_records)
    picks = np.unique(np.linspace(0, total - 1, min(config.shape_sample, total)).astype(np.int64))
    counts = []
    for index in picks:
        record = source[int(index)]
        height, width = patches.native_size(*_image_size(record["image"]), patch)
        counts.append(height * width // patch.patch_size**2)
        if counts[-1] > patch.max_patches:  # smart_resize's rounding up for extreme aspect ratios
            raise ValueError(f"record {record['id']!r}: its {height}x{width} resize has {counts[-1]} patches, over "
                             f"the {patch.max_patches} that max_pixels {patch.max_pixels} allows")
    return shapes.fit_slots(counts, config.num_shapes, patch.max_patches)


class PrepareExample:
    """grain map (with the stream position): raw record -> RGB uint8 image (native: already resized) + fields."""

    def __init__(self, config: PipelineConfig, patch: patches.PatchConfig):
        self.native, self.patch = config.resize == "native", patch

    def __call__(self, position: int, record) -> dict:
        """Decode the image (and size it, for native batches) and turn bytes fields into str."""
        with PIL.Image.open(io.BytesIO(record["image"])) as image:
            pixels = patches.to_rgb_array(image)
        if self.native:
            pixels = patches.resize(pixels, *patches.native_size(*pixels.shape[:2], self.patch), self.patch.resample)
        out = {"image": pixels, "lat": float(record["lat"]), "lon": float(record["lon"]), "position": position,
               "padding": bool(record.get(host_slices.PADDING_KEY, False))}
        for key in HOST_KEYS:
            value = record[key]
            out[key] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        return out


class SplitWindow(FlatMapTransform):
    """grain flat map: a window of examples -> its batches (native: sorted by size; in seeded random order
    when shuffling, else smallest first)."""

    def __init__(self, config: PipelineConfig, host_batch_size: int):
        self.config, self.host_batch_size = config, host_batch_size
        self.max_fan_out = config.sort_window if config.resize == "native" else 1

    def flat_map(self, window: Sequence[dict]) -> list[list[dict]]:
        """The window's examples cut into host batches (the last may be short)."""
        if self.config.resize != "native":
            return [list(window)]
        window_index = window[0]["position"] // (self.host_batch_size * self.config.sort_window)
        rng = np.random.default_rng([self.config.seed, window_index]) if self.config.shuffle else None
        sizes = [e["image"].shape[0] * e["image"].shape[1] for e in window]
        return [[window[i] for i in batch] for batch in shapes.window_batches(sizes, self.host_batch_size, rng)]


class Collate:
    """grain map: a list of prepared examples -> one static-shape host batch (numpy dict).

    Picklable (loads its tokenizer lazily) so grain worker processes can run it.
    """

    def __init__(self, config: PipelineConfig, host_batch_size: int, shape: _Shapes):
        self.config, self.host_batch_size, self.shape = config, host_batch_size, shape
        self._tokenizer = None
        self._template = None

    def __getstate__(self):
        return {"config": self.config, "host_batch_size": self.host_batch_size, "shape": self.shape}

    def __setstate__(self, state):
        self.__init__(state["config"], state["host_batch_size"], state["shape"])

    @property
    def tokenizer(self) -> tokenizer_lib.Tokenizer:
        """The tokenizer, loaded on first use in whichever process runs the collate."""
        if self._tokenizer is None:
            self._tokenizer = tokenizer_lib.load_tokenizer(self.config.tokenizer_dir)
        return self._tokenizer

    @property
    def template(self) -> prompts.PromptTemplate:
        """The chat-templated prompt around one image, from the tokenizer's chat template."""
        if self._template is None:
            self._template = prompts.prompt_template(self.tokenizer, self.config.prompt)
        return self._template

    def prompt_length(self, patch_count: int) -> int:
        """Tokens of the prompt of an image of ``patch_count`` patches."""
        return self.template.length(patch_count // self.shape.patch.merge_size**2)

    def __call__(self, examples: Sequence[dict]) -> dict:
        """Patchify, tokenize and pad to the batch's static shape; a short batch is padded with copies."""
        batch_size, real = self.host_batch_size, len(examples)
        examples = list(examples) + [examples[-1]] * (batch_size - real)
        if self.config.resize == "native":
            batch = self._native_images(examples)
        else:
            batch = self._bucket_images(examples, real)
        batch.update(self._targets(examples))
        batch["lat"] = np.asarray([e["lat"] for e in examples], np.float64)
        batch["lon"] = np.asarray([e["lon"] for e in examples], np.float64)
        batch["example_mask"] = np.array([i < real and not e["padding"] for i, e in enumerate(examples)], np.int32)
        for key in HOST_KEYS:
            batch[key] = np.asarray([e[key] for e in examples], dtype=np.str_)
        return batch

    def _prompts(self, token_counts: Sequence[int], width: int) -> dict:
        """Left-padded prompt tokens / mask of width ``width`` for images of ``token_counts`` tokens."""
        tokens = np.full((len(token_counts), width), self.tokenizer.special_ids.pad, np.int32)
        mask = np.zeros((len(token_counts), width), np.int32)
        for row, count in enumerate(token_counts):
            ids = self.template.ids(count)
            tokens[row, width - len(ids):], mask[row, width - len(ids):] = ids, 1
        return {"prompt_tokens": tokens, "prompt_mask": mask}

    def _native_images(self, examples: Sequence[dict]) -> dict:
        """Each image (already at its native size) patchified into a slot of the batch's slot size."""
        patch = self.shape.patch
        values, grids = zip(*(patches.image_to_patches(e["image"], patch) for e in examples))
        counts = [len(v) for v in values]
        try:
            slot = shapes.slot_for(max(counts), self.shape.slots)
        except ValueError as error:
            worst = examples[int(np.argmax(counts))]
            raise ValueError(f"record {worst['id']}: {error} (max_pixels {patch.max_pixels})") from None
        pixel_values = np.zeros((len(examples), slot, patch.patch_dim), np.float32)
        for row, rows in enumerate(values):
            pixel_values[row, : len(rows)] = rows
        unit = patch.merge_size**2
        return {"pixel_values": pixel_values, "image_grid_thw": np.asarray(grids, np.int32),
                **self._prompts([c // unit for c in counts], self.prompt_length(slot))}

    def _bucket_images(self, examples: Sequence[dict], real: int) -> dict:
        """Every image resized to the bucket closest to the batch's median aspect ratio."""
        patch = self.shape.patch
        bucket = patches.choose_bucket([e["image"].shape[1] / e["image"].shape[0] for e in examples[:real]],
                                       self.config.buckets)
        values = [patches.image_to_patches(patches.resize(e["image"], *bucket, patch.resample), patch)[0]
                  for e in examples]
        grid = (1, bucket[0] // patch.patch_size, bucket[1] // patch.patch_size)
        count = patches.num_image_tokens(grid, patch.merge_size)
        return {"pixel_values": np.concatenate(values, axis=0),
                "image_grid_thw": np.tile(np.asarray(grid, np.int32), (len(examples), 1)),
                **self._prompts([count] * len(examples), self.config.max_prompt_len)}

    def _targets(self, examples: Sequence[dict]) -> dict:
        """The CoR answers + <|im_end|>, right-padded to max_target_len (longer ones truncated, with a warning)."""
        T = self.config.max_target_len
        targets = self.tokenizer.encode_batch([prompts.render_target(e["answer"]) for e in examples])
        tokens = np.full((len(examples), T), self.tokenizer.special_ids.pad, np.int32)
        mask = np.zeros((len(examples), T), np.int32)
        for row, ids in enumerate(targets):
            if len(ids) > T:
                logging.warning("target of %s is %d tokens, truncated to max_target_len %d",
                                examples[row]["id"], len(ids), T)
                ids = ids[:T]
            tokens[row, : len(ids)], mask[row, : len(ids)] = ids, 1
        return {"target_tokens": tokens, "target_mask": mask}


def check_prompt_lengths(config: PipelineConfig, tokenizer: tokenizer_lib.Tokenizer | None = None,
                         slots: Sequence[int] = ()) -> dict:
    """Check up front that every bucket's prompt fits ``max_prompt_len`` and that bucket sides are whole
    merged patches of the resolved processor; returns {bucket (h, w) or slot size: prompt length in tokens}."""
    patch = patch_config(config)
    collate = Collate(config, 1, _Shapes(patch, tuple(slots)))
    if tokenizer is not None:
        collate._tokenizer = tokenizer
    if config.resize == "native":
        return {slot: collate.prompt_length(slot) for slot in slots}
    lengths = {}
    for bucket in config.buckets:
        if bucket[0] % patch.factor or bucket[1] % patch.factor:
            raise ValueError(f"bucket {bucket} sides must be multiples of {patch.factor}")
        lengths[tuple(bucket)] = collate.prompt_length(bucket[0] * bucket[1] // patch.patch_size**2)
        if lengths[tuple(bucket)] > config.max_prompt_len:
            raise ValueError(f"bucket {bucket} needs a {lengths[tuple(bucket)]}-token prompt; "
                             f"raise max_prompt_len above {config.max_prompt_len}")
    return lengths


def _split(host_batch: dict) -> tuple[dict, tuple[int, int, int] | None, dict]:
    """(device-bound numpy arrays, the bucket's grid or None for native batches, host arrays) of a host batch.

    Coordinates go both ways: float32 for the devices (the reward's
    Haversine), float64 for the host (evaluation, reports).
    """
    arrays = {key: np.asarray(host_batch[key], np.float32) if key in COORDINATE_KEYS else host_batch[key]
              for key in DEVICE_KEYS}
    host = {key: host_batch[key] for key in HOST_KEYS}
    host.update({key: np.asarray(host_batch[key], np.float64) for key in COORDINATE_KEYS})
    native = host_batch["pixel_values"].ndim == 3
    return arrays, None if native else tuple(int(v) for v in host_batch["image_grid_thw"][0]), host


def pad_native_batch(host_batch: dict, slot: int, prompt_len: int, pad_id: int) -> dict:
    """A native host batch widened to ``slot`` patches per image and ``prompt_len`` prompt tokens
    (zero patches, left-padded prompts), the shape another host's batch has at the same step."""
    batch = dict(host_batch)
    pixel_values, prompt_tokens = host_batch["pixel_values"], host_batch["prompt_tokens"]
    extra_patches, extra_tokens = slot - pixel_values.shape[1], prompt_len - prompt_tokens.shape[1]
    if extra_patches < 0 or extra_tokens < 0:
        raise ValueError(f"cannot narrow a batch of {pixel_values.shape[1]} patches x {prompt_tokens.shape[1]} "
                         f"prompt tokens to {slot} x {prompt_len}")
    batch["pixel_values"] = np.pad(pixel_values, ((0, 0), (0, extra_patches), (0, 0)))
    left = lambda a, value: np.pad(a, ((0, 0), (extra_tokens, 0)), constant_values=value)  # noqa: E731
    batch["prompt_tokens"], batch["prompt_mask"] = left(prompt_tokens, pad_id), left(host_batch["prompt_mask"], 0)
    return batch


def agree_native_shapes(host_batch: dict, pad_id: int) -> dict:
    """Widen this host's native batch to the largest slot and prompt width of all hosts' batches at this step.

    Each host sorts and batches its own shard, so hosts may pick different
    slot sizes for the same step; a global array needs one shape. One small
    allgather per step.
    """
    if jax.process_count() == 1:
        return host_batch
    mine = np.asarray([host_batch["pixel_values"].shape[1], host_batch["prompt_tokens"].shape[1]], np.int32)
    slot, prompt_len = np.max(multihost_utils.process_allgather(mine), axis=0)
    if (slot, prompt_len) == tuple(mine):
        return host_batch
    return pad_native_batch(host_batch, int(slot), int(prompt_len), pad_id)


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


def _is_full(batch_size: int, examples: Sequence[dict]) -> bool:
    return len(examples) == batch_size


class GeoBatchIterator:
    """Iterator of ``Batch``es with checkpointable state (``get_state``/``set_state``).

    Without a mesh the arrays stay numpy (host batch); with one they are
    global ``jax.Array``s. ``grain_iterator`` is the underlying grain
    dataset iterator. ``slots`` are the native batches' patch slot sizes.
    """

    def __init__(self, config: PipelineConfig, mesh=None, batch_axes: Sequence[str] | None = None):
        self.config, self.mesh, self.batch_axes = config, mesh, batch_axes
        processes = jax.process_count()
        if config.global_batch_size % processes:
            raise ValueError(f"global_batch_size {config.global_batch_size} not divisible by {processes} hosts")
        host_batch_size = config.global_batch_size // processes
        source = builder.open_records(config.records_dir, config.split)
        patch = patch_config(config)
        self.slots = fit_slot_sizes(config, patch, source) if config.resize == "native" else ()
        shape = _Shapes(patch, self.slots)
        collate = Collate(config, host_batch_size, shape)
        self.pad_id = collate.tokenizer.special_ids.pad
        dataset = grain.MapDataset.source(source)
        if config.num_records is not None:
            dataset = dataset[: config.num_records]
        self.split_size, self.num_records = len(source), len(dataset)  # records in the split / read from it
        if config.drop_remainder:  # training: equal shares per host, what does not divide is dropped
            dataset = dataset[: len(dataset) - len(dataset) % processes][jax.process_index()::processes]
            if config.shuffle:
                dataset = dataset.shuffle(seed=config.seed)  # reseeded every epoch by the repeat below
        else:  # evaluation: every record once across hosts, the last global batch padded
            order = np.random.default_rng(config.seed).permutation(len(dataset)) if config.shuffle else None
            dataset = grain.MapDataset.source(host_slices.PaddedHostSlices(
                dataset, host_batch_size, jax.process_index(), processes, order))
        dataset = dataset.repeat(config.num_epochs).map_with_index(PrepareExample(config, patch))
        window = host_batch_size * (config.sort_window if config.resize == "native" else 1)
        batches = dataset.to_iter_dataset().batch(window, batch_fn=list)
        batches = FlatMapIterDataset(batches, SplitWindow(config, host_batch_size))
        if config.drop_remainder:
            batches = batches.filter(functools.partial(_is_full, host_batch_size))
        batches = batches.map(collate)
        if config.worker_count:
            batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count))
        self.grain_iterator = iter(batches)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        """The next batch (global arrays if a mesh was given)."""
        host_batch = next(self.grain_iterator)
        if self.mesh is not None:
            if host_batch["pixel_values"].ndim == 3:
                host_batch = agree_native_shapes(host_batch, self.pad_id)
            return to_global(host_batch, self.mesh, self.batch_axes)
        return Batch(*_split(host_batch))

    def get_state(self) -> bytes:
        """Where the iterator is (which records come next); small, JSON bytes."""
        return json.dumps(self.grain_iterator.get_state()).encode()

    def set_state(self, state: bytes) -> None:
        """Continue from a state ``get_state`` returned (same config required)."""
        self.grain_iterator.set_state(json.loads(state))


def make_iterator(config: PipelineConfig, mesh=None, state: bytes | None = None,
                  batch_axes: Sequence[str] | None = None) -> GeoBatchIterator:
    """Build the batch iterator, checking the config first; resume from ``state`` if given."""
    check_prompt_lengths(config)
    iterator = GeoBatchIterator(config, mesh, batch_axes)
    if state is not None:
        iterator.set_state(state)
    return iterator
