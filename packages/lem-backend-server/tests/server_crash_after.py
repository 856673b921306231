"""Test helper: run a real server command and kill it (SIGKILL) once it has logged N completion requests.

``python server_crash_after.py CMD ...``; N comes from ``LEM_TEST_CRASH_AFTER`` (0 or unset: never). The
server's output is passed through, so lem's log shows it. Exits 1 after the kill, like a crashed server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main() -> None:
    after = int(os.environ.get("LEM_TEST_CRASH_AFTER", "0"))
    child = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert child.stdout is not None
    seen = 0
    for raw in child.stdout:
        sys.stdout.buffer.write(raw)
        sys.stdout.flush()
        if b"POST /v1/completions" in raw:
            seen += 1
            if after and seen >= after:
                print(f"server_crash_after: killing the server after {seen} requests", flush=True)
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
                sys.exit(1)
    sys.exit(child.wait())


if __name__ == "__main__":
    main()
