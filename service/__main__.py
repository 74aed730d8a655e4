"""Command line: `python -m service [--host HOST] [--port PORT] [--model PATH]`.

Every other setting comes from the `UPSCALER_*` environment variables (see `service.config`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from service.config import Settings
from service.main import create_app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m service", description="Serve the EDSR x4 upscaler over HTTP."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--model", type=Path, default=None, help="ONNX model file (overrides UPSCALER_MODEL_PATH)"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Starts uvicorn with the settings from the environment and the command line.

    Exits with uvicorn's start-up failure status (3) when the model cannot be loaded.
    """
    args = parse_args(argv)
    settings = Settings(model_path=args.model) if args.model is not None else Settings()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s"
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
