"""The socket edge: what stands between a client's websocket and the fan-out core.

The class users subclass (:mod:`.websocket`), how a socket reads its client
(:mod:`.reading`, :mod:`.inbound`, within the hub's inbound limits), answers its channel requests
(:mod:`.channel_requests`), and checks who may connect (:mod:`.admission`, with
:mod:`.origins` and :mod:`.identity`); and the server-sent event streams of clients that
cannot open a WebSocket (:mod:`.sse`); and which hub a socket uses when it names none
(:mod:`.hubs`). It depends on the hub; the hub and the core never import it.
"""
