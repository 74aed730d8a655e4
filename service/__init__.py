"""EDSR upscaling service.

Deliberately empty: importing `service.tiling` (as the training package does) must not pull in
FastAPI or onnxruntime.
"""
