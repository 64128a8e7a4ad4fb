"""The time limit of a worker whose tasks run in its own process (the online worker's threads pool)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import httpx
import joblib
import numpy as np
import pytest

from inferpool import keys, model_store
from tests.support.waiting import wait_until
from workers.watchdog import EXIT_TASK_OVERDUE, overdue

ROOT = Path(__file__).resolve().parents[2]


def test_overdue_names_only_requests_past_the_limit():
    now = 1000.0
    started = [SimpleNamespace(id=i, time_start=t) for i, t in (("a", 990.0), ("b", 969.0), ("c", None))]
    assert [r.id for r in overdue(started, now, 30.0)] == ["b"]
    assert overdue(started, now, 31.0) == []


@pytest.mark.timeout(120)
def test_a_task_past_the_time_limit_ends_a_threads_worker_and_its_replacement_runs_the_rest(
    stack_factory, tmp_path, reference_model
):
    """A threads pool cannot stop one task: the worker exits (to be started again) and nothing is lost."""
    from tests.support.slow_model import SlowModel

    X_train = np.random.default_rng(1).normal(size=(100, 20))
    model_dir = tmp_path / "models"
    joblib.dump(SlowModel(reference_model, 0.0), tmp_path / "slow.joblib")
    model_store.register_model(tmp_path / "slow.joblib", X_train, reference_model.predict(X_train), model_dir)
    env = {
        "INFERPOOL_MODEL_DIR": str(model_dir), "PYTHONPATH": str(ROOT), "INFERPOOL_TASK_TIME_LIMIT_S": "2",
        "INFERPOOL_ONLINE_REDELIVERY_S": "3", "INFERPOOL_PREDICT_TIMEOUT_S": "1",
    }  # fmt: skip
    st = stack_factory(**env)
    threads = {"INFERPOOL_ONLINE_POOL": "threads"}
    hung = st.start_worker("online", concurrency=1, name="online-slow@test", TEST_MODEL_DELAY_S="30", **threads)
    with httpx.Client(base_url=st.start_api(), timeout=30) as c:
        r = c.post("/v1/predict", json={"instances": [X_train[0].tolist()]})
        assert r.status_code == 504, r.text  # the caller gets a job id to poll
        assert hung.popen.wait(20) == EXIT_TASK_OVERDUE
        assert "past the 2 s time limit" in hung.log.read_text()
        # What a supervisor does: a fresh worker (here with a model that answers in time) runs the message.
        st.start_worker("online", concurrency=1, name="online-fresh@test", TEST_MODEL_DELAY_S="0", **threads)
        url = f"/v1/jobs/{r.json()['job_id']}"
        wait_until(lambda: c.get(url).json()["status"] == "succeeded", 30, "the held batch ran again")
        assert c.get(url).json()["predictions"] == reference_model.predict(X_train[:1]).tolist()
    assert st.client.hlen(keys.UNACKED_HASH) == 0
