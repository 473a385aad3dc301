"""Tornado handlers: the websocket queue, the HTTP API and the operator endpoints."""
