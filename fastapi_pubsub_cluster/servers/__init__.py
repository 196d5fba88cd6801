"""Server integrations, each needing an extra: the uvicorn websocket protocol that frames
each broadcast once (:mod:`.uvicorn_ws`, ``[uvicorn]``), the write coalescing it uses
(:mod:`.coalescing`) and the gunicorn worker class that serves it (:mod:`.gunicorn_worker`,
``[gunicorn]``). They depend on the core and the edge; nothing inside imports them.
"""
