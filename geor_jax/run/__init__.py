"""The training run behind the launch scripts: its config, its parts, its loop.

``config`` (the layout of a run config and the paper's defaults), ``build``
(model, optimizer, pipelines and policies from a config), ``loop`` (SFT and
GRPO loops with checkpoints and resume), ``logger`` (metrics to stdout,
JSONL and TensorBoard) and ``cli`` (one-line errors for the entry points).
The algorithms they wire together (``geor_jax.grpo``, ``sft``, ``rewards``,
``sampling``...) do not depend on this package.
"""
