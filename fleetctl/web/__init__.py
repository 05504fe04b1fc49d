"""`fleetctl serve`: a read-only, live web view of the journal for people away from the operator's terminal.

state.py reads the journal into plain data, views.py renders it as escaped HTML, server.py serves it
(stdlib http.server, server-sent events) with a strict Content-Security-Policy; assets.py holds the
little JavaScript that swaps sections in place. No build step, no framework.
"""
