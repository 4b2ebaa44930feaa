"""Data layer: Chain-of-Region TFDS records, the demo world, chat template and grain pipeline.

Modules (imported on use): ``patches`` (image -> Qwen2.5-VL patches),
``prompts`` (CoR instruction and chat template), ``tokenizer`` (checkpoint or
demo BPE tokenizer), ``layouts`` (on-disk CSV layouts), ``archives`` (images
read in place from folders, tars and zips), ``rows`` (rows -> build
candidates, the duplicate rule), ``encoding`` (image bytes for a record),
``report`` (build report and limits), ``builder`` (TFDS ArrayRecord
builder), ``shards`` (builds split across hosts), ``beam_build`` (the build
on Apache Beam), ``demo_world`` (offline procedural geotagged images),
``pipeline`` (grain input pipeline, batch format), ``hard_mining`` (MP16-Hard).
"""
