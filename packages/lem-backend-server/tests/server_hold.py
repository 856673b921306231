"""Test helper: start a long-running "server" through lem_backend_server.process, print its pid, then wait.

The test kills this process (SIGKILL or SIGTERM) and checks that the server went with it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from lem_backend_server import process


def main() -> None:
    log = Path(tempfile.mkdtemp(prefix="lem-hold-")) / "server.log"
    server = process.start([sys.executable, "-c", "import time; time.sleep(300)"], "http://127.0.0.1:9", log)
    print(server.proc.pid, flush=True)
    time.sleep(300)


if __name__ == "__main__":
    main()
