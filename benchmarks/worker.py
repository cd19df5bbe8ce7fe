"""Run one in-process timing loop in this fresh interpreter and print its samples as JSON.

``python -m benchmarks.worker MODULE:FUNCTION PLAN_JSON``: imports MODULE, calls
``FUNCTION(Plan(**PLAN_JSON))`` and prints one JSON line: ``{"samples": [...]}`` in
milliseconds, or ``{"not_available": why}`` / ``{"failed": why}``. Started by
:func:`benchmarks.harness.in_fresh_interpreter`; not meant to be run by hand.
"""

from __future__ import annotations

import importlib
import json
import sys

from benchmarks.harness import Plan, pack_error


def main(argv: list[str]) -> int:
    target, plan_json = argv
    module_name, _, func_name = target.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        reply: dict[str, object] = {"samples": func(Plan(**json.loads(plan_json)))}
    except Exception as e:
        reply = pack_error(e)
    # Whatever the measured code printed went before; the reply is the last line.
    print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
