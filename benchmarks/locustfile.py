"""locust's side of `make bench`: FastHttpUser sending the load generator's request.

The body and OIP headers come from the files `loadgen.py` writes, so locust sends the very
bytes the load generator and wrk send. No wait_time: each user sends its next request as
soon as the last one completes, a closed loop like the other two clients.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from locust import FastHttpUser, task

BODY = Path(os.environ["BAKEOFF_BENCH_BODY"]).read_bytes()
HEADERS: dict[str, str] = json.loads(os.environ["BAKEOFF_BENCH_HEADERS"])
PATH = os.environ["BAKEOFF_BENCH_PATH"]


class OipInferUser(FastHttpUser):
    network_timeout = 10.0
    connection_timeout = 10.0

    @task
    def infer(self) -> None:
        # Bytes go through untouched (geventhttpclient); locust's hint only names str and dict.
        self.client.post(PATH, data=BODY, headers=HEADERS)  # type: ignore[arg-type]
