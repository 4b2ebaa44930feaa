"""The Chain-of-Region prompt and the Qwen2.5-VL chat template, as text.

Geo-R asks the model for a location at four levels (country, state, city,
coordinates) and supervises it with the reverse-geocoded chain rendered by
``geor_jax.regions.render_answer``. This module writes the instruction (in
this project's own words, after the paper's CoR prompt) and wraps it in the
Qwen2.5-VL chat format with one ``<|vision_start|><|image_pad|>...<|vision_end|>``
span per image, so prompts tokenize identically with the real checkpoint's
tokenizer and with the small demo tokenizer.
"""

import dataclasses

from geor_jax import config_fields

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
ENDOFTEXT = "<|endoftext|>"

# Qwen2.5-VL's chat template inserts this system turn when none is given.
DEFAULT_SYSTEM = "You are a helpful assistant."

DEFAULT_INSTRUCTION = (
    "You are an expert in geographic reasoning. Look at the photo and work out where it was taken. "
    "Answer at four levels of detail, one per line, from coarse to fine:\n"
    "Country: <country>\n"
    "State: <state, province or other administrative region>\n"
    "City: <city or place>\n"
    "Coordinates: (<latitude>, <longitude>)\n"
    "Give the coordinates in decimal degrees, as exactly one (latitude, longitude) pair."
)


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """What the user turn says; ``system=None`` drops the system turn."""

    instruction: str = config_fields.field(DEFAULT_INSTRUCTION, lambda v: None if v.strip() else "must not be empty")
    system: str | None = DEFAULT_SYSTEM

    def __post_init__(self):
        config_fields.check(self)


def image_span(num_image_tokens: int) -> str:
    """One image's placeholder: vision start, ``num_image_tokens`` image pads, vision end."""
    if num_image_tokens <= 0:
        raise ValueError(f"an image needs at least one token, got {num_image_tokens}")
    return VISION_START + IMAGE_PAD * num_image_tokens + VISION_END


def render_prompt(num_image_tokens: int | list[int], config: PromptConfig = PromptConfig()) -> str:
    """The chat-formatted prompt up to and including the assistant header.

    ``num_image_tokens``: tokens per image (``patches.num_image_tokens``), an
    int for one image or a list for several; images come before the text, as
    in Qwen2.5-VL's own template.
    """
    counts = [num_image_tokens] if isinstance(num_image_tokens, int) else list(num_image_tokens)
    parts = []
    if config.system is not None:
        parts.append(f"{IM_START}system\n{config.system}{IM_END}\n")
    images = "".join(image_span(n) for n in counts)
    parts.append(f"{IM_START}user\n{images}{config.instruction}{IM_END}\n")
    parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def render_target(answer: str) -> str:
    """The assistant turn the SFT loss is taken on: the CoR answer, then ``<|im_end|>``."""
    return answer + IM_END
