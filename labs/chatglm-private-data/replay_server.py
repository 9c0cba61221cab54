"""The smoke profile's chat API: the shared local replay server (:mod:`labkit.lab.replay`), serving
this lab's recorded replies (``data/smoke/replies.jsonl``: malformed JSON, a 429 and a 500 among them).

It answers ``POST /v1/chat/completions`` on 127.0.0.1 with the next entry of the JSON-lines script, so
the smoke profile exercises the real client path: HTTP, retries on 429 and 5xx, JSON-object replies,
usage accounting, validation of malformed replies, and the cache. ``generate.py`` does not know it is
talking to a replay. The replies are about one text, the ``source`` folder beside the script
(:func:`recorded_source`); the lab serves them for that text only.

    with ReplayServer(Path("replies.jsonl")) as url:   # http://127.0.0.1:<port>/v1
        ...
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from labkit.lab.replay import ReplayServer  # noqa: E402

__all__ = ["ReplayServer", "recorded_source"]


def recorded_source(script: Path) -> Path:
    """The text a replay script's replies were recorded for: the ``source`` folder beside it.

    The server answers in script order whatever it is asked, so its replies only make sense for that
    text: the lab starts it for that source only (``run.endpoint``) and asks a real chat API for
    other documents.
    """
    return Path(script).parent / "source"
