"""The child process of one job: video -> sampled frames -> SmolVLM2 -> JSON-lines events.

Imports `protocol` and never `server` or `client`; the only package that imports mlx,
mlx_vlm and av (hostile media crash or hang this child process, not the server).
"""
