"""Worker processes that read and encode a build's images, started small and fast.

Processes, not threads: threads would share one GIL with each other and with
the main process's CSV reading and TFDS writing. Workers fork from a
forkserver that has imported only this module and ``encoding`` (no TFDS, no
JAX), and they never re-run the launching script: multiprocessing would
otherwise import ``__main__`` in every worker it starts, so that functions
defined there unpickle, and tools/build_dataset.py imports TFDS and absl
(~3 s of each worker's start on a 2-core host). Workers only ever call
``encoding``, so nothing of ``__main__`` is needed there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
import threading
import types
from collections.abc import Iterator, Sequence

from geor_jax.data import archives, encoding

TASK_IMAGES = 8  # images per worker task: one round trip per 8 images keeps inter-process overhead small
_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
_BASE = multiprocessing.get_context(_METHOD)


@contextlib.contextmanager
def _main_module_hidden():
    """While a worker starts: ``__main__`` reads as a bare module, so the worker is not told to import it."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class _WorkerProcess(_BASE.Process):
    """A process of ``_BASE``'s start method whose launch leaves the parent's ``__main__`` out."""

    @staticmethod
    def _Popen(process_obj):  # noqa: N802 (multiprocessing's name)
        with _main_module_hidden():
            return _BASE.Process._Popen(process_obj)


class _WorkerContext(type(_BASE)):
    Process = _WorkerProcess


def _exit_with_parent() -> None:
    """Worker initializer: end this worker when the build's process dies. A SIGKILLed build would otherwise
    leave its workers (and through them the forkserver) waiting forever on a queue nobody writes."""
    parent = multiprocessing.parent_process()

    def watch():
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class ImageLoader:
    """Reads and encodes images in order: in this process (``num_workers=0``) or in worker processes."""

    def __init__(self, num_workers: int, max_long_side: int | None, quality: int):
        self.args = (max_long_side, quality)
        self.pool = None
        if num_workers > 0:
            context = _WorkerContext()
            if _METHOD == "forkserver":
                context.set_forkserver_preload([__name__])
            self.pool = concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context,
                                                             initializer=_exit_with_parent)

    def submit(self, sources: Sequence[archives.Source]) -> Iterator[tuple[bytes | None, str]]:
        """(bytes, "") or (None, error) per source, in order; work starts now when there are workers."""
        if self.pool is None:
            return (encoding.load_image(source, *self.args) for source in sources)
        futures = [self.pool.submit(encoding.load_images, sources[i:i + TASK_IMAGES], *self.args)
                   for i in range(0, len(sources), TASK_IMAGES)]
        return (result for future in futures for result in future.result())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
