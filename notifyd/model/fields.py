"""Field patterns shared by the records and the structures they carry (fallback chains)."""

from __future__ import annotations

import re

#: A category name (events, opt-outs, fallback chains by category).
CATEGORY_RE = re.compile(r"\A[A-Za-z0-9_.:\-]+\Z")
