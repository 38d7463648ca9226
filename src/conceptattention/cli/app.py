"""``conceptattention app``: serve the web app (Gradio) for a model, on this machine unless told otherwise."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from .common import CLIError, add_model_options


HELP = "serve the web app: prompt or image + concepts -> maps in the browser (needs the 'app' extra)"

DESCRIPTION = (
    "Serve an interactive page with two tabs: generate an image from a prompt and map concepts in it, or map "
    "concepts in an uploaded image. Requests run one at a time. The page is served on 127.0.0.1 (this machine only) "
    "unless --host is given. Install the extra first: pip install 'conceptattention[app]'."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``app`` subcommand to the ``conceptattention`` parser."""
    parser = subparsers.add_parser("app", help=HELP, description=DESCRIPTION)
    add_model_options(parser)
    server = parser.add_argument_group("server")
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 serves every network interface)",
    )
    server.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    server.add_argument(
        "--share", action="store_true", help="also ask Gradio for a public *.gradio.live link (off by default)"
    )
    server.add_argument(
        "--max-upload-mb", type=float, default=20.0, help="largest uploaded file, in MB (default 20)"
    )
    server.add_argument(
        "--max-megapixels",
        type=float,
        default=25.0,
        help="largest uploaded image, in megapixels; bigger ones are refused before decoding (default 25)",
    )
    server.add_argument("--cmap", default="plasma", help="matplotlib colour map of heatmaps (default: plasma)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve the page until interrupted (Ctrl-C)."""
    from ..app import AppLimits, MapService, launch_app
    from ..app.ui import GradioMissingError, import_gradio
    from ..models import load_model

    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be from 0 to 65535, got {args.port}.")
    if not args.max_upload_mb > 0 or not args.max_megapixels > 0:
        raise CLIError("--max-upload-mb and --max-megapixels must be positive.")
    try:
        import_gradio()  # fail before the (slow) model load
    except GradioMissingError as error:
        raise CLIError(str(error)) from None
    # Refused requests (INFO) and unexpected errors with their tracebacks (ERROR) of the app go to stderr.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("conceptattention.app").setLevel(logging.INFO)
    loaded = load_model(
        args.model, device=args.device, dtype=args.dtype, offload=args.offload, allow_pickle=args.allow_pickle
    )
    if loaded.notice:
        print(loaded.notice)
    limits = AppLimits(
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_megapixels * 1_000_000)
    )
    service = MapService(
        loaded,
        limits=limits,
        cmap=args.cmap,
        generator_device="cpu" if args.offload != "none" else args.device,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"Serving on {args.host}: anyone who can reach this machine on port {args.port} can use the app.")
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None  # like Ctrl-C
    try:
        launch_app(service, host=args.host, port=args.port, share=args.share)
    except OSError as error:
        raise CLIError(f"Cannot serve on {args.host}:{args.port} ({error}); choose another --port.") from error
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
        service.close()  # delete the run files
    return 0


def _interrupt(signal_number: int, frame: FrameType | None) -> None:
    """SIGTERM handler: stop the server the way Ctrl-C does (Gradio closes, the run files are deleted)."""
    raise KeyboardInterrupt
