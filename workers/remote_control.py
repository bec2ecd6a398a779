"""Celery remote control for a process that is not a Celery worker (the model worker).

``celery -A workers.celery_app inspect ping -d gpu@host`` is how an operator (and the
container healthcheck) asks a worker whether it is alive; Celery's own workers answer on
their pidbox. :class:`ControlNode` answers the same broadcast for the model worker, from a
thread with its own broker connection, so a long generate call on the GPU does not leave
the ping unanswered. Commands:

* ``ping`` -> ``{"ok": "pong"}``;
* ``shutdown`` -> the worker finishes its current batch and stops (``celery control
  shutdown -d gpu@host``).

Any other command (``inspect stats``, ``revoke``...) gets ``{"error": ...}`` back: the
model worker drops a canceled job's pages because the job is terminal, not by task id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

RECONNECT_S = 1.0  # pause before a lost broker connection is opened again
POLL_S = 1.0  # drain timeout: how often the thread looks at its stop flag


def _ping(state: Any, **_: Any) -> dict[str, str]:  # noqa: ARG001 - kombu passes the node's state
    return {"ok": "pong"}


def _shutdown(state: Any, **_: Any) -> dict[str, str]:
    logger.warning("remote control: shutdown asked for %s", state.hostname)
    state.stop()
    return {"ok": "shutting down after the current batch"}


COMMANDS: dict[str, Callable[..., Any]] = {"ping": _ping, "shutdown": _shutdown}


class ControlNode:
    """Answers the Celery control broadcasts addressed to ``state.hostname`` (all when none
    is named) until :meth:`close`. ``state`` needs ``hostname`` and ``stop()``."""

    def __init__(self, app: Any, state: Any) -> None:
        self.app = app
        self.state = state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="docproc-remote-control", daemon=True)

    def start(self) -> ControlNode:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(POLL_S * 3)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    node = self.app.control.mailbox.Node(self.state.hostname, state=self.state, handlers=COMMANDS)
                    node.channel = conn.channel()
                    consumer = node.listen(callback=self._on_message(node))
                    try:
                        while not self._stop.is_set():
                            try:
                                conn.drain_events(timeout=POLL_S)
                            except TimeoutError:
                                pass
                    finally:
                        consumer.cancel()
                        node.channel.close()
            except Exception as exc:  # noqa: BLE001 - a lost broker: connect again, never die
                logger.debug("remote control: %s; reconnecting", exc)
                self._stop.wait(RECONNECT_S)

    def _on_message(self, node: Any) -> Callable[[Any, Any], None]:
        def handle(body: Any, message: Any) -> None:
            self.app.clock.forward()
            try:
                node.handle_message(body, message)
            except Exception as exc:  # noqa: BLE001 - a bad control message must not stop the thread
                logger.warning("remote control: %s: %s", type(exc).__name__, exc)

        return handle
