"""Signal handling shared by kpigate's uvicorn servers (router and collector)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def signals_end_the_server() -> Iterator[None]:
    """Let SIGTERM/SIGINT end ``uvicorn.Server.run()`` instead of the process.

    uvicorn shuts down gracefully on them (the app's lifespan closes the prediction log),
    then re-raises the signal under the handler installed before it; with the default
    handler that would kill the process before it closes cleanly and exits 0. Outside the
    main thread nothing is changed (uvicorn does not handle signals there either).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
