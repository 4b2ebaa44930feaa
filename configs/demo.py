"""The CPU demo: a tiny Qwen2.5-VL-shaped model on the embedded demo world.

    .venv/bin/python launch/train.py --config=configs/demo.py:sft --workdir=/tmp/geor_demo/sft
    .venv/bin/python launch/train.py --config=configs/demo.py:grpo --workdir=/tmp/geor_demo/grpo \\
        --config.model.init_from=/tmp/geor_demo/sft/hf
    .venv/bin/python launch/train.py --config=configs/demo.py:grpo_lora --workdir=/tmp/geor_demo/grpo_lora \\
        --config.model.init_from=/tmp/geor_demo/sft/hf

``grpo_lora`` is ``grpo`` with LoRA adapters (r=8) on the text decoder: only they train, and the KL reference is
the SFT policy they sit on, with the adapters off.

``launch/demo.py`` runs the whole recipe (``geor_jax.run.recipe``): records,
SFT, the SFT model on the training set, hard mining, GRPO on the hard
records, held-out evaluation; ``get_recipe()`` holds its world and mining.
The layout of every config is documented in ``geor_jax/run/config.py``.
"""

import ml_collections

from geor_jax.run import config as run_config

DEMO_ROOT = "/tmp/geor_demo"
TRAIN_IMAGES, TEST_IMAGES = 400, 256


def get_recipe():
    """The demo world (world seeds: train 0, held-out test 1) and MP16-Hard mining of the recipe."""
    r = ml_collections.ConfigDict()
    # (height, width) of the photos, one drawn per photo: square, 2:1 landscape, 1:2 portrait. Each keeps its
    # shape (native resolution: 64, 72 and 72 patches), so the runs compile two batch shapes.
    r.world = dict(train_images=TRAIN_IMAGES, test_images=TEST_IMAGES, image_sizes=((112, 112), (84, 168), (168, 84)),
                   vocab_size=2048)
    r.mining = dict(radius_km=200.0, correct_km=25.0)  # the paper's
    return r


def get_config(variant: str = "sft"):
    stage = "grpo" if variant == "grpo_lora" else variant
    c = run_config.base_config(stage)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.model.dtype = "float32"
    c.model.remat = False
    c.model.scan_layers = False
    c.model.text.update(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                        rope_theta=1e6, mrope_section=(4, 6, 6), tie_word_embeddings=False)
    c.model.vision.update(depth=2, hidden_size=64, num_heads=2, intermediate_size=128, window_size=112,
                          fullatt_block_indexes=(1,))

    c.data.records_dir = f"{DEMO_ROOT}/data/geo_cor_records/demo_sizes_{TRAIN_IMAGES}_0_train/1.1.0"
    c.data.tokenizer_dir = f"{DEMO_ROOT}/data/demo_tokenizer"
    c.data.global_batch_size = 16 if stage == "sft" else 8
    # Photos at native resolution (launch/demo.py: 112x112, 84x168, 168x84 -> 64 or 72 patches, 16 or 18 image
    # tokens). max_pixels is the largest photo's area, so one slot of 72 patches holds every photo: it pads ~4% of
    # patches, and every jitted function compiles once instead of once per slot size (compiling is most of the
    # demo's time on a CPU).
    c.data.processor.max_pixels = 84 * 168
    c.data.num_shapes = 1
    c.data.max_target_len = 64
    c.data.worker_count = 0
    c.data.prompt.instruction = "Where was this photo taken? Answer with Country, State, City and Coordinates."

    c.eval.records_dir = f"{DEMO_ROOT}/data/geo_cor_records/demo_sizes_{TEST_IMAGES}_1_test/1.1.0"
    c.eval.batch_size = 64
    c.eval.num_examples = 0  # all
    c.eval.every_steps = 0  # 0: only at the end
    c.eval.max_new_tokens = 64

    c.optimizer.learning_rate = 3e-3 if stage == "sft" else 1e-4
    c.optimizer.warmup_steps = 10 if stage == "sft" else 0
    c.optimizer.final_learning_rate_fraction = 0.1

    c.grpo.group_size = 8
    c.grpo.max_new_tokens = 64

    c.train.num_steps = 300 if stage == "sft" else 60
    c.train.log_every = 20 if stage == "sft" else 5
    c.train.checkpoint_every = 100 if stage == "sft" else 20
    c.train.keep_checkpoints = 2
    if variant == "grpo_lora":
        c.lora.update(rank=8, alpha=16.0)
        c.optimizer.learning_rate = 1e-3  # adapters take LoRA's usual 10x the full fine-tuning rate
    return c
