"""Data config of the embedded demo world (ml_collections): records, tokenizer and pipeline.

Build the data first:
    python tools/build_dataset.py --demo --data_dir=/tmp/georjax_demo
then ``pipeline.config_from_dict(get_config())`` gives the PipelineConfig.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Demo data: 300 procedural 224x224 images -> one (1, 16, 16) grid, 64 image tokens per prompt."""
    config = ml_collections.ConfigDict()
    config.data_dir = "/tmp/georjax_demo"
    config.demo_images = 300
    config.demo_seed = 0
    config.records_dir = "/tmp/georjax_demo/geo_cor_records/demo_300_0_train/1.0.0"
    config.tokenizer_dir = "/tmp/georjax_demo/demo_tokenizer"
    config.split = "train"
    config.global_batch_size = 16
    config.buckets = ((224, 224),)
    config.max_prompt_len = 192
    config.max_target_len = 64
    config.seed = 0
    config.shuffle = True
    config.num_epochs = ml_collections.config_dict.placeholder(int)
    config.drop_remainder = True
    config.worker_count = 0
    return config
