"""The promos job written for Pathway (the peer engine of scripts/bench.sh).

Kafka promos (JSON) ⋈ Postgres subscribers_restaurants → drafts in Kafka (JSON) and rows in
Postgres, like `dishflow promos`. Differences, forced by what Pathway offers here:
* Subscribers are read with psycopg through pw.io.python: a snapshot, then with --follow
  either the whole table re-read every --poll-ms and the difference applied
  (--capture poll), or its changes taken from a logical replication slot every --poll-ms
  (--capture slot, test_decoding; dishflow streams its slot the same way). Pathway's own
  Postgres reader (pw.io.postgres.read) needs a license key that is validated online, and
  this machine has no internet.
* Campaign validity is checked against the wall clock when a message is read (no
  retraction at the end of a campaign); the latest datetime_created per campaign wins.
* Feedback rows go to a table of Pathway's own layout (pw.io.postgres.write adds `time` and
  `diff` columns), not into subscribers_feedback's upsert.

Usage: promos.py --brokers H:P --topic IN --out-topic OUT --dsn "host=… dbname=…"
                 --feedback-table T [--static] [--follow] [--capture poll|slot]
                 [--poll-ms 100] [--fetch-wait-ms N]
"""

import argparse
import os
import re
import time
from collections import Counter

import pathway as pw
import psycopg

from peer_kafka import consumer_settings


class Campaign(pw.Schema):
    restaurant_id: str
    adv_campaign_id: str
    adv_campaign_content: str
    adv_campaign_owner: str
    adv_campaign_owner_contact: str
    adv_campaign_datetime_start: int
    adv_campaign_datetime_end: int
    datetime_created: int


class Subscription(pw.Schema):
    client_id: str = pw.column_definition(primary_key=True)
    restaurant_id: str = pw.column_definition(primary_key=True)


class Subscribers(pw.io.python.ConnectorSubject):
    """subscribers_restaurants as distinct (client, restaurant) pairs: a snapshot, then
    (with follow) the difference of each re-read of the whole table."""

    def __init__(self, dsn, follow, poll_ms):
        super().__init__()
        self.dsn, self.follow, self.poll = dsn, follow, poll_ms / 1000.0

    def read(self, conn):
        with conn.cursor() as cur:
            cur.execute("SELECT DISTINCT client_id, restaurant_id FROM subscribers_restaurants")
            return set(cur.fetchall())

    def run(self):
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            current = self.read(conn)
            for client_id, restaurant_id in current:
                self.next(client_id=client_id, restaurant_id=restaurant_id)
            self.commit()
            while self.follow:
                time.sleep(self.poll)
                now = self.read(conn)
                for client_id, restaurant_id in now - current:
                    self.next(client_id=client_id, restaurant_id=restaurant_id)
                for client_id, restaurant_id in current - now:
                    self.delete(client_id=client_id, restaurant_id=restaurant_id)
                self.commit()
                current = now


# One column of a test_decoding tuple: name[type]:value, a text value quoted with '' inside.
COLUMN = re.compile(r"(\w+)\[[^\]]*\]:('(?:[^']|'')*'|\S+)")
CHANGE = re.compile(r"^table public\.subscribers_restaurants: (INSERT|UPDATE|DELETE|TRUNCATE):(.*)$")


def columns(text):
    """{name: value} of a test_decoding tuple (the new tuple of an UPDATE comes last)."""
    out = {}
    for name, value in COLUMN.findall(text.split("new-tuple:")[-1]):
        out[name] = value[1:-1].replace("''", "'") if value.startswith("'") else value
    return out


class SlotSubscribers(pw.io.python.ConnectorSubject):
    """subscribers_restaurants as distinct (client, restaurant) pairs, followed through a
    temporary logical replication slot (test_decoding) polled every poll_ms: the slot is
    created before the snapshot is read, so no change is lost; a change the snapshot already
    holds is recognised by its row id and applied once."""

    def __init__(self, dsn, poll_ms):
        super().__init__()
        self.dsn, self.poll = dsn, poll_ms / 1000.0
        self.rows = {}  # id -> (client, restaurant)
        self.pairs = Counter()  # (client, restaurant) -> rows

    def add(self, row_id, pair):
        self.remove(row_id)
        self.rows[row_id] = pair
        self.pairs[pair] += 1
        if self.pairs[pair] == 1:
            self.next(client_id=pair[0], restaurant_id=pair[1])

    def remove(self, row_id):
        pair = self.rows.pop(row_id, None)
        if pair is None:
            return
        self.pairs[pair] -= 1
        if self.pairs[pair] == 0:
            del self.pairs[pair]
            self.delete(client_id=pair[0], restaurant_id=pair[1])

    def run(self):
        slot = f"pathway_peer_{os.getpid()}"
        with psycopg.connect(self.dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding', true)",
                        (slot,))
            cur.execute("SELECT id, client_id, restaurant_id FROM subscribers_restaurants")
            for row_id, client_id, restaurant_id in cur.fetchall():
                self.add(str(row_id), (client_id, restaurant_id))
            self.commit()
            while True:
                time.sleep(self.poll)
                cur.execute("SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL)",
                            (slot,))
                changed = False
                for (data,) in cur.fetchall():
                    m = CHANGE.match(data)
                    if not m:
                        continue
                    changed = True
                    kind, tuple_text = m.groups()
                    if kind == "TRUNCATE":
                        for row_id in list(self.rows):
                            self.remove(row_id)
                        continue
                    c = columns(tuple_text)
                    if kind == "DELETE":
                        self.remove(c["id"])
                    else:
                        self.add(c["id"], (c["client_id"], c["restaurant_id"]))
                if changed:
                    self.commit()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--brokers", default="127.0.0.1:9092")
    p.add_argument("--topic", required=True)
    p.add_argument("--out-topic", required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--feedback-table", required=True)
    p.add_argument("--static", action="store_true", help="read the topic to its end, then stop")
    p.add_argument("--autocommit-ms", type=int,
                   help="autocommit_duration_ms of every reader (default: Pathway's own, what a "
                        "user running a backlog keeps; the latency benchmarks set 10)")
    p.add_argument("--follow", action="store_true", help="keep following the subscribers")
    p.add_argument("--capture", choices=["poll", "slot"], default="poll",
                   help="with --follow: re-read the whole table (poll) or take its changes "
                        "from a logical replication slot (slot), every --poll-ms")
    p.add_argument("--poll-ms", type=int, default=100)
    p.add_argument("--fetch-wait-ms", type=int,
                   help="librdkafka fetch.wait.max.ms of the promo reader (the latency benchmarks "
                        "set 20 for every engine: Tansu answers an empty fetch only after this wait)")
    a = p.parse_args()
    # Pathway's default commit interval unless asked: a backlog run in 10 ms minibatches
    # would be one Postgres transaction (and one counter churn) per 10 ms.
    commit = {} if a.autocommit_ms is None else {"autocommit_duration_ms": a.autocommit_ms}

    kafka = consumer_settings(a.brokers, a.fetch_wait_ms)
    promos = pw.io.kafka.read(kafka, topic=a.topic, schema=Campaign, format="json",
                              mode="static" if a.static else "streaming", **commit)
    now = int(time.time())
    valid = promos.filter((pw.this.adv_campaign_datetime_start <= now)
                          & (pw.this.adv_campaign_datetime_end > now))
    latest = valid.groupby(pw.this.adv_campaign_id).reduce(
        row=pw.reducers.argmax(pw.this.datetime_created))
    campaigns = valid.ix(latest.row)
    if a.follow and a.capture == "slot":
        subject = SlotSubscribers(a.dsn, a.poll_ms)
    else:
        subject = Subscribers(a.dsn, a.follow, a.poll_ms)
    subscribers = pw.io.python.read(subject, schema=Subscription, **commit)
    drafts = campaigns.join(subscribers, pw.left.restaurant_id == pw.right.restaurant_id).select(
        pw.left.restaurant_id, pw.left.adv_campaign_id, pw.left.adv_campaign_content,
        pw.left.adv_campaign_owner, pw.left.adv_campaign_owner_contact,
        pw.left.adv_campaign_datetime_start, pw.left.adv_campaign_datetime_end,
        pw.right.client_id, pw.left.datetime_created,
        trigger_datetime_created=now)
    pw.io.kafka.write(drafts, {"bootstrap.servers": a.brokers}, topic_name=a.out_topic,
                      format="json")
    pg = dict(kv.split("=", 1) for kv in a.dsn.split())
    pw.io.postgres.write(drafts, pg, a.feedback_table, init_mode="create_if_not_exists")
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)


if __name__ == "__main__":
    main()
