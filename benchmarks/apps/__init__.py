"""Servers under test, one module per system, each run as real processes.

Every app serves clients on ``/ws/{channel}`` (or its own protocol path), answers
``GET /healthz``, and, when the driver cannot publish through Redis, accepts publications
on the control websocket ``/control``: each text frame is ``<channel>\\n<JSON payload>``.
"""

CONTROL_PATH = "/control"
#: Keepalive ping interval of every measured server: a day, i.e. none within a run (see
#: ``benchmarks.servers.KEEPALIVE_NOTE``).
NO_KEEPALIVE_SECONDS = 86_400


def split_control_frame(frame: str) -> tuple[str, str]:
    """``"<channel>\\n<payload>"`` -> (channel, payload text)."""
    channel, _, payload = frame.partition("\n")
    return channel, payload
