"""The server's runtime: what serves the sockets fast, apart from the Django project.

`server` (the draining uvicorn launcher and its workers' supervisor), `websocket` (the
WebSocket protocol with batched writes), `frames` (the frames chat hands to it),
`pipelined_redis` (the event loop's auto-pipelined Redis client), `db` (the loop's
PostgreSQL connections, group commit, the database threads), `layers` (the pub/sub
channel layer) and `hub` (the process's one layer channel, routing events to its
sockets). Nothing here imports `chat` or `presence`, but the server's drain, which
has `chat.sockets` close the sockets.
"""
