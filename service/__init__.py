"""EDSR upscaling service: an HTTP shell over an inference core that knows no HTTP.

The folders are the layers; each may import only the layers listed before it
(`tests/service/test_package.py` checks it):

- `service.config`, `service.exceptions`, `service.host`, `service.logs`: the foundations
  (settings, domain exceptions, host facts and atomic writes, log formats).
- `service.imaging`: image I/O on bytes and numpy arrays (decode, encode, the PNG writer, the
  choice of output format).
- `service.core`: the inference core (engines, models and their lifecycle, hot reload, the
  pipeline, tiling, ensemble, admission, metrics, the asynchronous jobs, fetching by URL); no
  FastAPI, no Starlette.
- `service.api`: the HTTP shell (app factory, routes, dependencies, auth, errors, middleware,
  the web page).
- `service.entry`: the entry points (the server process, the `upscale` CLI, Ray Serve).

`python -m service` (`__main__`) and `uvicorn service.main:app` (`main`) are the stable names of
the server's entry points. This file imports nothing: importing `service.core.tiling` (as the
training package does) must not pull in FastAPI or onnxruntime.
"""
