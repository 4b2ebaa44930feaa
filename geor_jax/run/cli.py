"""Entry points' error handling: a config or usage error is one line on stderr and exit status 2.

``main(fn)`` replaces ``absl.app.run(fn)`` in the launch scripts and tools:
flag parsing errors (unknown ``--config.x`` keys, bad values, missing
required flags) and the ``ConfigError`` / ``UsageError`` that ``fn`` raises
print ``<script>: <message>`` without a traceback; other errors propagate.
"""

from __future__ import annotations

import functools
import os
import sys

from absl import app, flags

from geor_jax.config_fields import ConfigError


def _fail(error: Exception) -> None:
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{os.path.basename(sys.argv[0])}: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    # ml_collections' config flags raise KeyError / AttributeError / TypeError / ValueError for a bad
    # ``--config.x=...`` (unknown key, wrong type): while parsing, every one of them is a usage error.
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as error:
        _fail(error)


def main(fn) -> None:
    """Run ``fn(argv)`` as ``absl.app.run`` does, with one-line errors for bad flags and configs."""

    @functools.wraps(fn)
    def guarded(argv):
        try:
            return fn(argv)
        except (ConfigError, app.UsageError) as error:
            _fail(error)

    app.run(guarded, flags_parser=_parse_flags)
