"""How a model is named to clients: never a server path."""

from __future__ import annotations

import os
import re

# Hugging Face repository ids look like "owner/name" with no path-like prefix.
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hf_id(model: str) -> bool:
    """True for "owner/name" that is not an existing local folder."""
    return bool(_HF_ID.match(model)) and not os.path.exists(model)


def model_display_name(model: str) -> str:
    """The Hugging Face id as given, or only the folder name of a local model."""
    if looks_like_hf_id(model):
        return model
    return os.path.basename(os.path.normpath(os.path.expanduser(model))) or model
