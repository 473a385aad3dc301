"""Each wire protocol's shapes, as pure functions: servd's websocket messages and frames, v2, OpenAI, OpenAPI. No
Tornado.
"""
