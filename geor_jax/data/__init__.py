"""Data layer: Chain-of-Region TFDS records, the demo world, chat template and grain pipeline.

Modules (imported on use): ``patches`` (image -> Qwen2.5-VL patches),
``prompts`` (CoR instruction and chat template), ``tokenizer`` (checkpoint or
demo BPE tokenizer), ``layouts`` (on-disk CSV layouts), ``builder`` (TFDS
ArrayRecord builder), ``demo_world`` (offline procedural geotagged images),
``pipeline`` (grain input pipeline, batch format), ``hard_mining`` (MP16-Hard).
"""
