"""The entry points: the server process (`server`: `python -m service`, `uvicorn
service.main:app`), the `upscale` command line (`client`) and Ray Serve (`serve`).

May import every other layer; nothing imports them.
"""
