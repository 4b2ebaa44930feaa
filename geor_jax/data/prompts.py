"""The Chain-of-Region prompt, rendered by the tokenizer's own chat template.

Geo-R asks the model for a location at four levels (country, state, city,
coordinates) and supervises it with the reverse-geocoded chain rendered by
``geor_jax.regions.render_answer``. This module writes the instruction (in
this project's own words, after the paper's CoR prompt) and puts it, after
the image, into the user turn of the checkpoint's chat template
(``apply_chat_template`` with the generation prompt), the way transformers'
processor builds the prompt a served model sees: an edited template is
followed. The template's one ``<|image_pad|>`` then becomes one pad per
merged patch group of the image, as the processor expands it.
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
    """What the chat says: the user turn's instruction and, if not None, a system turn
    (None: none is passed, and the template decides; Qwen2.5-VL's inserts ``DEFAULT_SYSTEM``)."""

    instruction: str = config_fields.field(DEFAULT_INSTRUCTION, lambda v: None if v.strip() else "must not be empty")
    system: str | None = None

    def __post_init__(self):
        config_fields.check(self)


def chat_messages(config: PromptConfig = PromptConfig()) -> list[dict]:
    """The conversation to template: [system], then a user turn holding the image and the instruction."""
    messages = [] if config.system is None else [{"role": "system", "content": [{"type": "text", "text": config.system}]}]
    return messages + [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": config.instruction}]}]


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """A tokenized one-image prompt: ``prefix`` ids, then the image's pads, then ``suffix`` ids."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    image_pad: int

    def ids(self, num_image_tokens: int) -> list[int]:
        """Token ids of the prompt for an image of ``num_image_tokens`` merged patch groups."""
        if num_image_tokens <= 0:
            raise ValueError(f"an image needs at least one token, got {num_image_tokens}")
        return [*self.prefix, *[self.image_pad] * num_image_tokens, *self.suffix]

    def length(self, num_image_tokens: int) -> int:
        """``len(ids(num_image_tokens))``."""
        return len(self.prefix) + num_image_tokens + len(self.suffix)


def prompt_template(tokenizer, config: PromptConfig = PromptConfig()) -> PromptTemplate:
    """The prompt of ``tokenizer``'s chat template (a ``geor_jax.data.tokenizer.Tokenizer``) for ``config``.

    Renders ``chat_messages(config)`` with ``apply_chat_template`` (generation
    prompt added) and splits it at the image's ``<|image_pad|>``: special
    tokens are never merged with their neighbours, so an image of n tokens
    tokenizes as prefix + n pads + suffix (checked here for n = 1 and 2).
    """
    hf = tokenizer.hf
    if not getattr(hf, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(hf, 'name_or_path', '')!r} has no chat template "
                         "(chat_template.jinja or tokenizer_config.json's chat_template)")
    text = hf.apply_chat_template(chat_messages(config), tokenize=False, add_generation_prompt=True)
    if text.count(IMAGE_PAD) != 1:
        raise ValueError(f"the chat template rendered {text.count(IMAGE_PAD)} {IMAGE_PAD} for one image: {text!r}")
    before, after = text.split(IMAGE_PAD)
    template = PromptTemplate(tuple(tokenizer.encode(before)), tuple(tokenizer.encode(after)),
                              tokenizer.special_ids.image_pad)
    for count in (1, 2):
        if tokenizer.encode(before + IMAGE_PAD * count + after) != template.ids(count):
            raise ValueError(f"the tokenizer merges {IMAGE_PAD} with the text around it in {text!r}")
    return template


def render_target(answer: str) -> str:
    """The assistant turn the SFT loss is taken on: the CoR answer, then ``<|im_end|>``."""
    return answer + IM_END
