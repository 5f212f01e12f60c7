"""``latentqa serve``: an interactive inspector page and an HTTP API over one Reader.

One copy of the model serves everything: a single worker thread owns it and runs queued
requests, merging compatible ones into one batch (see ``worker.py``). See docs/serve.md.

    from latentqa.serve import create_app
    app = create_app(latentqa.load(), token="s3cret")   # any ASGI server can run it
"""

from .adapters import Adapters
from .app import create_app
from .limits import Limits
from .security import is_loopback

__all__ = ["Adapters", "Limits", "create_app", "is_loopback"]
