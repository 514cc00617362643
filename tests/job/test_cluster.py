"""The job's local Dask cluster: bounded debugging logs on the driver's scheduler."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.job import MESSAGE_LOG_LENGTH, _dask

pytestmark = pytest.mark.slow


def test_scheduler_message_logs_are_short() -> None:
    """Dask's default keeps the last 1000 messages (task arguments included) per connection."""
    cfg = load_config(None, {"dask": {"n_workers": 1}})
    with _dask(cfg, None) as client:
        scheduler = client.cluster.scheduler
        streams = list(scheduler.stream_comms.values())
        assert streams and all(s.recent_message_log.maxlen == MESSAGE_LOG_LENGTH for s in streams)
        assert client.scheduler_comm.recent_message_log.maxlen == MESSAGE_LOG_LENGTH
