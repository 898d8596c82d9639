"""A variant's identity is its content: the digest of what determines its equations.

Two specs with the same switches (and, once specs carry them, the same equations) are
the same cell whatever their prose says; two specs that differ in any of them are
different cells even under one name. The sweep's cell ids, the run directory's
``spec_hash`` column and the report's grouping all read this one definition.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Keys of a spec that describe it for a reader and change no number.
PROSE_KEYS = ("description", "citation")
DIGEST_LENGTH = 12


def spec_content(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec mapping (``Variant.to_dict()``) less its prose keys."""
    return {k: v for k, v in spec.items() if k not in PROSE_KEYS}


def spec_digest(spec: Mapping[str, Any]) -> str:
    """Hex digest of a spec's content. The name is left out too: a renamed copy of a
    cell is the same cell, and two cells under one name are told apart by this."""
    content = spec_content(spec)
    content.pop("name", None)
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:DIGEST_LENGTH]
