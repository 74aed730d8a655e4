"""The inference core: engines (`engines`), the served models (`registry`) and their lifecycle
(`lifecycle`, `reload`), one upscale from bytes to bytes (`pipeline`, `tiling`, `ensemble`),
admission control (`admission`) and metrics (`metrics`).

Imports the foundations and `service.imaging`; never FastAPI, Starlette or `service.api`.
"""
