"""Hold one p4runtime-shell session and run Python sent by a test in it, as a user at the shell would.

Runs under ``.venv-shell/bin/python`` (p4runtime-shell pins protobuf<3.21, so it cannot live in .venv);
imports nothing of offloadgen. Protocol: one JSON object per line on stdin, ``{"code": "..."}``; the code
runs in a namespace that persists across requests and holds ``sh`` (``p4runtime_sh.shell``); whatever it
assigns to ``result`` (JSON-able) comes back as one line ``{"ok": true, "result": ...}`` on the original
stdout, an exception as ``{"ok": false, "error": "...", "traceback": "..."}``. Everything the shell prints
goes to stderr, so it can never be taken for a reply.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any


def main() -> int:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import p4runtime_sh.shell as sh

    namespace: dict[str, Any] = {"sh": sh}
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        namespace.pop("result", None)
        try:
            exec(request["code"], namespace)
            reply = {"ok": True, "result": namespace.get("result")}
        except Exception as exc:  # the test decides what an error means; the session stays up
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        replies.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
