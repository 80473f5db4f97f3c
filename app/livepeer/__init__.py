"""Livepeer BYOC gateway support: capability routing, the `Livepeer` header, noise removal.

A gateway takes `POST <GATEWAY_URL>/process/request/<original path>` with a
base64 `Livepeer` header naming the capability. `settings` reads the routes
and capabilities from the environment; `transforms` holds the request and
response steps that apply when the router picked a Livepeer target.
"""
