"""Routing: providers, backends, balancing, health and the model catalog.

`router.Router.plan(exchange)` is all the relay asks; see router.py for the
rules. This package's __init__ imports nothing: app/config.py loads
`routing.settings` in the Gunicorn master, before gevent patches sockets.
"""
