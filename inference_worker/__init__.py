"""The child process of one job: video -> sampled frames -> SmolVLM2 -> JSON-lines events."""
