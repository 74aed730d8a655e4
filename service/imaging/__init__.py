"""Image I/O: uploads decoded and checked (`decode`), outputs encoded (`encode`, `pngwriter`),
and the output format chosen from the Accept header (`negotiation`).

Bytes and numpy arrays in and out; imports only the foundations (`service.config`,
`service.exceptions`, `service.host`).
"""
