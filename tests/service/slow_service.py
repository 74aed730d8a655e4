"""`python -m tests.service.slow_service DELAY [service arguments]`: the real service command
(`service.entry.server.main`, with its signal handling), every model call slowed by DELAY seconds.

The drain test runs it as a separate process, so that SIGTERM reaches a real server.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import onnxruntime as ort


def main() -> None:
    delay = float(sys.argv[1])
    original = ort.InferenceSession.run

    def run(session: ort.InferenceSession, *args: Any, **kwargs: Any) -> Any:
        time.sleep(delay)
        return original(session, *args, **kwargs)

    ort.InferenceSession.run = run  # type: ignore[method-assign]
    from service.entry.server import main as serve

    serve(sys.argv[2:])


if __name__ == "__main__":
    main()
