"""The order counters (CDM) written for Pathway: the peer engine of the suite's W5.

Kafka orders (JSON) + Redis dictionaries → cdm.user_product_counters and
cdm.user_category_counters, as `dishflow orders` computes them: per order the latest
update_ts wins; an order counts for (user, product) and (user, category) when its final
status is CLOSED and its user, restaurant and products are in the dictionaries; order_cnt
is the number of distinct such orders; keys are UUID v5 in dishflow's namespace; names
come from the restaurant's menu. Differences, forced by what Pathway offers here:
* Redis has no Pathway connector: the dictionaries are read once with redis-py (SCAN +
  MGET) through pw.io.python.
* Counters go to tables of Pathway's own layout (pw.io.postgres.write appends the change
  stream with `time` and `diff` columns), not an upsert; the final counters are the rows
  whose changes sum to a positive count.
* Only the CDM layer (the counters): STG and the Data Vault are not written.

Usage: orders.py --brokers H:P --topic T --redis-url redis://… --redis-keys 'prefix*'
                 --dsn "host=… dbname=…" --table-prefix P [--static]
"""

import argparse
import json
import uuid

import pathway as pw
import redis

from peer_kafka import consumer_settings

NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://dishflow.dev/dds")


class Order(pw.Schema):
    object_id: int
    object_type: str
    payload: pw.Json


class MenuItem(pw.Schema):
    restaurant_id: str = pw.column_definition(primary_key=True)
    product_id: str = pw.column_definition(primary_key=True)
    product_name: str
    category: str


class User(pw.Schema):
    user_id: str = pw.column_definition(primary_key=True)


class Dictionary(pw.io.python.ConnectorSubject):
    """Menu items or users from the Redis values of the keys matching `pattern`."""

    def __init__(self, url, pattern, kind):
        super().__init__()
        self.url, self.pattern, self.kind = url, pattern, kind

    def run(self):
        client = redis.Redis.from_url(self.url)
        keys = list(client.scan_iter(match=self.pattern, count=1000))
        for start in range(0, len(keys), 1000):
            for raw in client.mget(keys[start:start + 1000]):
                if raw is None:
                    continue
                try:
                    value = json.loads(raw)
                except ValueError:
                    continue
                if self.kind == "menu" and "menu" in value:
                    for item in value["menu"]:
                        self.next(restaurant_id=value["_id"], product_id=item["_id"],
                                  product_name=item["name"], category=item["category"])
                elif self.kind == "user" and "login" in value:
                    self.next(user_id=value["_id"])
        self.commit()


@pw.udf
def hub_key(business_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, business_id))


@pw.udf
def lines(payload: pw.Json) -> list[str]:
    return [item["id"] for item in payload.value["order_items"]]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--brokers", default="127.0.0.1:9092")
    p.add_argument("--topic", required=True)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--redis-keys", default="*")
    p.add_argument("--dsn", required=True)
    p.add_argument("--table-prefix", default="pathway")
    p.add_argument("--static", action="store_true", help="read the topic to its end, then stop")
    p.add_argument("--autocommit-ms", type=int,
                   help="autocommit_duration_ms of every reader (default: Pathway's own, what a "
                        "user running a backlog keeps; the latency benchmarks set 10)")
    a = p.parse_args()
    # Pathway's default commit interval unless asked: a backlog run in 10 ms minibatches
    # would be one Postgres transaction (and one counter churn) per 10 ms.
    commit = {} if a.autocommit_ms is None else {"autocommit_duration_ms": a.autocommit_ms}

    kafka = consumer_settings(a.brokers)
    raw = pw.io.kafka.read(kafka, topic=a.topic, schema=Order, format="json",
                           mode="static" if a.static else "streaming", **commit)
    orders = raw.filter(pw.this.object_type == "order").select(
        pw.this.object_id,
        update_ts=pw.this.payload["update_ts"].as_str(),
        status=pw.this.payload["final_status"].as_str(),
        restaurant_id=pw.this.payload["restaurant"]["id"].as_str(),
        user_id=pw.this.payload["user"]["id"].as_str(),
        products=lines(pw.this.payload),
    )
    latest = orders.groupby(pw.this.object_id).reduce(row=pw.reducers.argmax(pw.this.update_ts))
    closed = orders.ix(latest.row).filter(pw.this.status == "CLOSED")
    order_lines = closed.flatten(pw.this.products).select(
        pw.this.object_id, pw.this.restaurant_id, pw.this.user_id, product_id=pw.this.products)

    menu = pw.io.python.read(Dictionary(a.redis_url, a.redis_keys, "menu"), schema=MenuItem, **commit)
    users = pw.io.python.read(Dictionary(a.redis_url, a.redis_keys, "user"), schema=User, **commit)
    resolved = order_lines.join(
        menu, pw.left.restaurant_id == pw.right.restaurant_id,
        pw.left.product_id == pw.right.product_id,
    ).select(pw.left.object_id, pw.left.user_id, pw.left.product_id, pw.right.product_name,
             pw.right.category)
    resolved = resolved.join(users, pw.left.user_id == pw.right.user_id).select(*pw.left)
    # An order counts only when every line resolved: lines per order vs resolved lines.
    wanted = order_lines.groupby(pw.this.object_id).reduce(pw.this.object_id,
                                                           n=pw.reducers.count())
    got = resolved.groupby(pw.this.object_id).reduce(pw.this.object_id, n=pw.reducers.count())
    complete = wanted.join(got, pw.left.object_id == pw.right.object_id).filter(
        pw.left.n == pw.right.n).select(pw.left.object_id)
    counted = resolved.join(complete, pw.left.object_id == pw.right.object_id).select(*pw.left)

    products = counted.groupby(pw.this.user_id, pw.this.product_id, pw.this.object_id).reduce(
        pw.this.user_id, pw.this.product_id, product_name=pw.reducers.max(pw.this.product_name))
    products = products.groupby(pw.this.user_id, pw.this.product_id).reduce(
        user_id=hub_key(pw.this.user_id), product_id=hub_key(pw.this.product_id),
        product_name=pw.reducers.max(pw.this.product_name), order_cnt=pw.reducers.count())
    categories = counted.groupby(pw.this.user_id, pw.this.category, pw.this.object_id).reduce(
        pw.this.user_id, pw.this.category)
    categories = categories.groupby(pw.this.user_id, pw.this.category).reduce(
        user_id=hub_key(pw.this.user_id), category_id=hub_key(pw.this.category),
        category_name=pw.this.category, order_cnt=pw.reducers.count())

    pg = dict(kv.split("=", 1) for kv in a.dsn.split())
    pw.io.postgres.write(products, pg, f"{a.table_prefix}_user_product_counters",
                         init_mode="create_if_not_exists")
    pw.io.postgres.write(categories, pg, f"{a.table_prefix}_user_category_counters",
                         init_mode="create_if_not_exists")
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)


if __name__ == "__main__":
    main()
