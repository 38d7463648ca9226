"""The ConceptAttention web app: type a prompt and concepts (or upload an image) and see the maps in a browser.

Start it with ``conceptattention app`` (needs the ``app`` extra: ``pip install 'conceptattention[app]'``). The page
is built with Gradio, which is imported only when the page is built, so this package imports without it. It uses only
the public API of :mod:`conceptattention`.

Example:
    >>> from conceptattention.app import MapService, launch_app
    >>> from conceptattention.models import load_model
    >>> service = MapService(load_model())  # the shipped ShapesWorld toy model
    >>> demo = launch_app(service, port=7861, prevent_thread_lock=True, quiet=True)  # http://127.0.0.1:7861
    >>> demo.close()
    Closing server running on port: 7861
"""

from .service import (
    DISPLAY_SIDE,
    AppInputError,
    AppLimits,
    MapResult,
    MapService,
    Outcome,
    parse_concepts,
    run_safely,
)
from .ui import GradioMissingError, build_app, launch_app


__all__ = [
    "DISPLAY_SIDE",
    "AppInputError",
    "AppLimits",
    "GradioMissingError",
    "MapResult",
    "MapService",
    "Outcome",
    "build_app",
    "launch_app",
    "parse_concepts",
    "run_safely",
]
