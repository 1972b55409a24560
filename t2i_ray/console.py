"""Console output that survives Ray: the one writer behind every `log=` default.

Once any Ray process prints, Ray's driver log printer replaces `builtins.print`
(`ray.experimental.tqdm_ray`), so a `print` captured earlier (a default argument, a closure, a
callback attribute) no longer pickles by name, and Tune fails to save its state
(`PicklingError: Can't pickle <built-in function print>`). `console` is a plain module-level
function: it pickles by reference and looks up `sys.stdout` when it is called.
"""
from __future__ import annotations

import sys


def console(message: str) -> None:
    """Write one line to the current standard output and flush it."""
    stream = sys.stdout
    stream.write(f"{message}\n")
    stream.flush()


__all__ = ["console"]
