"""The CPU demo: a tiny Qwen2.5-VL-shaped model on the embedded demo world.

    .venv/bin/python launch/train.py --config=configs/demo.py:sft --workdir=/tmp/geor_demo/sft
    .venv/bin/python launch/train.py --config=configs/demo.py:grpo --workdir=/tmp/geor_demo/grpo \\
        --config.model.init_from=/tmp/geor_demo/sft/hf

``launch/demo.py`` builds the data and runs both stages and the evaluation.
The layout of every config is documented in ``geor_jax/run/config.py``.
"""

from geor_jax.run import config as run_config

DEMO_ROOT = "/tmp/geor_demo"


def get_config(stage: str = "sft"):
    c = run_config.base_config(stage)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.model.dtype = "float32"
    c.model.remat = False
    c.model.scan_layers = False
    c.model.text.update(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                        rope_theta=1e6, mrope_section=(4, 6, 6), tie_word_embeddings=False)
    c.model.vision.update(depth=2, hidden_size=64, num_heads=2, intermediate_size=128, window_size=112,
                          fullatt_block_indexes=(1,))

    c.data.records_dir = f"{DEMO_ROOT}/data/geo_cor_records/demo_sizes_400_0_train/1.1.0"
    c.data.tokenizer_dir = f"{DEMO_ROOT}/data/demo_tokenizer"
    c.data.global_batch_size = 16 if stage == "sft" else 8
    # Photos at native resolution (launch/demo.py: 112x112, 84x168, 168x84 -> 16 or 18 image tokens), capped at
    # 32 tokens; slot sizes fitted to the data: the two the photos need, and one for anything up to the cap.
    c.data.processor.max_pixels = 112 * 112 * 2
    c.data.num_shapes = 3
    c.data.max_target_len = 64
    c.data.worker_count = 0
    c.data.prompt.instruction = "Where was this photo taken? Answer with Country, State, City and Coordinates."

    c.eval.records_dir = f"{DEMO_ROOT}/data/geo_cor_records/demo_sizes_64_1_test/1.1.0"
    c.eval.batch_size = 16
    c.eval.num_examples = 64
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
    return c
