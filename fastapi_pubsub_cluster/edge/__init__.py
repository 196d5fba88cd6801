"""The socket edge: what stands between a client's websocket and the fan-out core.

The class users subclass (:mod:`.websocket`), how a socket reads its client
(:mod:`.reading`, :mod:`.inbound`, :mod:`.limits`), answers its channel requests
(:mod:`.channel_requests`), and checks who may connect (:mod:`.admission`, with
:mod:`.origins` and :mod:`.identity`); and the server-sent event streams of clients that
cannot open a WebSocket (:mod:`.sse`).
It depends on the core; the core never imports it.
"""
