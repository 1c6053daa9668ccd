"""The promos job written for Pathway (the peer engine of scripts/bench.sh).

Kafka promos (JSON) ⋈ Postgres subscribers_restaurants → drafts in Kafka (JSON) and rows in
Postgres, like `dishflow promos`. Differences, forced by what Pathway offers here:
* Subscribers are read with psycopg through pw.io.python (a snapshot; with --follow, the
  table is re-read every --poll-ms and the difference applied): Pathway's own Postgres
  reader (pw.io.postgres.read) needs a license key that is validated online, and this
  machine has no internet.
* Campaign validity is checked against the wall clock when a message is read (no
  retraction at the end of a campaign); the latest datetime_created per campaign wins.
* Feedback rows go to a table of Pathway's own layout (pw.io.postgres.write adds `time` and
  `diff` columns), not into subscribers_feedback's upsert.

Usage: promos.py --brokers H:P --topic IN --out-topic OUT --dsn "host=… dbname=…"
                 --feedback-table T [--static] [--follow] [--poll-ms 100] [--fetch-wait-ms N]
"""

import argparse
import time

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
    (with follow) the difference of each re-read."""

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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--brokers", default="127.0.0.1:9092")
    p.add_argument("--topic", required=True)
    p.add_argument("--out-topic", required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--feedback-table", required=True)
    p.add_argument("--static", action="store_true", help="read the topic to its end, then stop")
    p.add_argument("--follow", action="store_true", help="keep re-reading the subscribers")
    p.add_argument("--poll-ms", type=int, default=100)
    p.add_argument("--fetch-wait-ms", type=int,
                   help="librdkafka fetch.wait.max.ms of the promo reader (the latency benchmarks "
                        "set 20 for every engine: Tansu answers an empty fetch only after this wait)")
    a = p.parse_args()

    kafka = consumer_settings(a.brokers, a.fetch_wait_ms)
    promos = pw.io.kafka.read(kafka, topic=a.topic, schema=Campaign, format="json",
                              mode="static" if a.static else "streaming",
                              autocommit_duration_ms=10)
    now = int(time.time())
    valid = promos.filter((pw.this.adv_campaign_datetime_start <= now)
                          & (pw.this.adv_campaign_datetime_end > now))
    latest = valid.groupby(pw.this.adv_campaign_id).reduce(
        row=pw.reducers.argmax(pw.this.datetime_created))
    campaigns = valid.ix(latest.row)
    subscribers = pw.io.python.read(Subscribers(a.dsn, a.follow, a.poll_ms),
                                    schema=Subscription, autocommit_duration_ms=10)
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
