"""The HTTP shell (FastAPI): the app factory (`app`), the endpoints (`routes`), their parameters
(`deps`), API keys (`auth`), the error table (`errors`), the middleware (`middleware`), the
app's typed state (`context`) and the web page (`web`, `static/`).

May import the foundations, `service.imaging` and `service.core`; nothing imports it but the
entry points.
"""
