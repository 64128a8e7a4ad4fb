"""Polling a job until it ends, shared by the tests that submit jobs."""

from __future__ import annotations

import time

import httpx


def wait_job(client: httpx.Client, job_id: str, timeout_s: float = 60.0) -> dict:
    """The job's view once it has succeeded or failed; reads that fail (Redis down, say) are retried."""
    deadline = time.monotonic() + timeout_s
    view: dict = {}
    while time.monotonic() < deadline:
        r = client.get(f"/v1/jobs/{job_id}")
        if r.status_code == 200:
            view = r.json()
            if view["status"] in ("succeeded", "failed"):
                return view
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s:g} s: {view.get('status')}")
