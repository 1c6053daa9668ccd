"""Kafka reader settings shared by the Pathway peers."""

import time


def consumer_settings(brokers: str, fetch_wait_ms: int | None = None) -> dict:
    """librdkafka settings for a peer's input reader: a fresh consumer group reading from
    the beginning. The short session timeout matters on Tansu, whose JoinGroup for a new
    group waits out about half of the session timeout (librdkafka's default 45 s made every
    peer start take ~20 s before it read a message)."""
    settings = {
        "bootstrap.servers": brokers,
        "group.id": f"pathway-peer-{time.time_ns()}",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": "6000",
        "heartbeat.interval.ms": "500",
    }
    if fetch_wait_ms is not None:
        settings["fetch.wait.max.ms"] = str(fetch_wait_ms)
    return settings
