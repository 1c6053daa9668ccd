"""The legacy engine of the geo job for scripts/bench.sh: a PySpark batch computing the three
geo marts (../../../../shared/SPEC.md, Job 3) from a JSON-lines file of events
(`dishflow produce events --out FILE`) and the cities in Postgres (`geo.cities`), written to
tables of its own schema in that database:

    <schema>.zones            the zone mart, the columns of mart.geo_zones
    <schema>.users            the user mart, the columns of mart.geo_users
    <schema>.recommendations  (user_left, user_right, zone_id) of the friend recommendations

The way the legacy daily batch computed them, in Spark's DataFrame API: zones by the nearest
city centre (haversine), registrations and positions as each user's earliest / latest
message, stays by window functions (a run of consecutive messages in one city), and pairs
within 1 km from 1-km cells of the positions, then a common channel and no direct message.

The marts are written as a Spark user writes to Postgres: the DataFrame JDBC writer (the
PostgreSQL JDBC driver from Debian's libpostgresql-jdbc-java, which `setup.sh spark`
installs; batched inserts rewritten into multi-row statements), into tables created with the
marts' column types. Run it through spark-submit (installed by `setup.sh spark`):

    spark-submit --master 'local[2]' --jars /usr/share/java/postgresql.jar geo_spark.py \
        --events FILE --dsn DSN [--schema spark] [--timings FILE]

`--timings FILE` writes its phases as JSON: session (from the script's start to a Spark
session), compute (the marts computed and cached), write (the JDBC writes). The JVM's own
start before the script is the rest of the process's wall time.
"""

import argparse
import json
import time

import psycopg
from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

EARTH_KM = 6371.0
HOME_DAYS = 27

EVENT = T.StructType(
    [
        T.StructField("event_type", T.StringType()),
        T.StructField(
            "event",
            T.StructType(
                [
                    T.StructField("message_id", T.LongType()),
                    T.StructField("message_from", T.StringType()),
                    T.StructField("message_to", T.StringType()),
                    T.StructField("message_ts", T.StringType()),
                    T.StructField("datetime", T.StringType()),
                    T.StructField("reaction_from", T.StringType()),
                    T.StructField("user", T.StringType()),
                    T.StructField("subscription_user", T.StringType()),
                    T.StructField("subscription_channel", T.LongType()),
                ]
            ),
        ),
        T.StructField("lat", T.DoubleType()),
        T.StructField("lon", T.DoubleType()),
    ]
)


def km(lat1, lon1, lat2, lon2):
    """Great-circle distance in km between two points given as columns or numbers."""
    rad = F.radians
    lat1, lon1, lat2, lon2 = (F.lit(c) if isinstance(c, (int, float)) else c
                              for c in (lat1, lon1, lat2, lon2))
    a = (F.pow(F.sin((rad(lat2) - rad(lat1)) / 2), 2)
         + F.cos(rad(lat1)) * F.cos(rad(lat2)) * F.pow(F.sin((rad(lon2) - rad(lon1)) / 2), 2))
    return 2 * EARTH_KM * F.asin(F.sqrt(a))


def events(spark, path, cities):
    """Every event with its user, time, kind and, when it has coordinates, its zone."""
    raw = spark.read.schema(EVENT).json(path)
    e = raw.event
    user = (F.when(raw.event_type == "message", e.message_from)
            .when(raw.event_type == "reaction", e.reaction_from)
            .otherwise(F.coalesce(e.user, e.subscription_user)))
    # The nearest city centre, ties to the smaller id: the least (distance, id, …) over the
    # cities — one projection per event, no join.
    nearest = F.array_min(F.array(*[
        F.struct(km(raw.lat, raw.lon, c["lat"], c["lng"]).alias("d"), F.lit(c["id"]).alias("id"),
                 F.lit(c["city"]).alias("city"), F.lit(c["timezone"]).alias("tz"))
        for c in cities
    ]))
    ts = F.coalesce(e.message_ts, e.datetime).cast("timestamp")
    has_point = raw.lat.isNotNull() & raw.lon.isNotNull()
    return raw.select(
        raw.event_type.alias("kind"),
        user.cast("long").alias("user_id"),
        ts.alias("ts"),
        e.message_id.alias("message_id"),
        e.message_to.cast("long").alias("message_to"),
        e.subscription_channel.alias("channel"),
        raw.lat, raw.lon,
        F.when(has_point, nearest.id).alias("zone_id"),
        F.when(has_point, nearest.city).alias("city"),
        F.when(has_point, nearest.tz).alias("tz"),
    ).withColumn("week", F.date_trunc("week", "ts").cast("date")) \
     .withColumn("month", F.trunc("ts", "month"))


def zone_mart(ev):
    messages = ev.where(ev.kind == "message")
    # A registration: the user's earliest message (time, then message id), in its zone.
    first = messages.groupBy("user_id").agg(
        F.min(F.struct("ts", "message_id", "zone_id", "week", "month")).alias("f"))
    registrations = first.select("f.*").where(F.col("zone_id").isNotNull()) \
        .select("zone_id", "week", "month", F.lit(1).alias("registration"))
    zoned = ev.where(ev.zone_id.isNotNull()).select(
        "zone_id", "week", "month",
        F.when(ev.kind == "message", 1).otherwise(0).alias("m"),
        F.when(ev.kind == "reaction", 1).otherwise(0).alias("r"),
        F.when(ev.kind == "subscription", 1).otherwise(0).alias("s"),
        F.lit(0).alias("registration"),
    )
    counted = zoned.unionByName(
        registrations.select("zone_id", "week", "month", F.lit(0).alias("m"), F.lit(0).alias("r"),
                             F.lit(0).alias("s"), "registration"))
    cells = counted.groupBy("zone_id", "week", "month").agg(
        F.sum("m").alias("m"), F.sum("r").alias("r"), F.sum("s").alias("s"),
        F.sum("registration").alias("u"))
    week = Window.partitionBy("zone_id", "week")
    month = Window.partitionBy("zone_id", "month")
    return cells.select(
        "month", "week", "zone_id",
        *[F.sum(c).over(week).alias(f"week_{name}") for c, name in
          [("m", "message"), ("r", "reaction"), ("s", "subscription"), ("u", "user")]],
        *[F.sum(c).over(month).alias(f"month_{name}") for c, name in
          [("m", "message"), ("r", "reaction"), ("s", "subscription"), ("u", "user")]],
    )


def user_mart(located):
    """located: messages with coordinates."""
    order = Window.partitionBy("user_id").orderBy("ts", "message_id")
    runs = located.withColumn(
        "starts", (F.lag("zone_id").over(order).isNull()
                   | (F.lag("zone_id").over(order) != F.col("zone_id"))).cast("int")
    ).withColumn("stay", F.sum("starts").over(order))
    stays = runs.groupBy("user_id", "stay").agg(
        F.first("city").alias("city"), F.min("ts").alias("since"), F.max("ts").alias("until"))
    by_stay = Window.partitionBy("user_id").orderBy("stay")
    last = Window.partitionBy("user_id")
    stays = stays.withColumn(
        "ends", F.coalesce(F.lead("since").over(by_stay), F.max("until").over(last))
    ).withColumn(
        "home", F.expr(f"timestampdiff(MICROSECOND, since, ends) >= {HOME_DAYS} * 86400000000"))
    per_user = stays.groupBy("user_id").agg(
        F.max(F.when(F.col("home"), F.struct("stay", "city"))).city.alias("home_city"),
        F.count("*").cast("int").alias("travel_count"),
        F.transform(F.sort_array(F.collect_list(F.struct("stay", "city"))),
                    lambda s: s.city).alias("travel_array"),
    )
    latest = located.groupBy("user_id").agg(
        F.max(F.struct("ts", "message_id", "city", "tz")).alias("l"))
    acts = latest.select(
        "user_id", F.col("l.city").alias("act_city"),
        F.date_format(F.from_utc_timestamp("l.ts", F.col("l.tz")),
                      "yyyy-MM-dd HH:mm:ss.SSSSSS").alias("local_time"))
    return acts.join(per_user, "user_id").select(
        "user_id", "act_city", "home_city", "travel_count", "travel_array", "local_time")


def recommendations(ev, located):
    # Positions: each user's latest message with coordinates.
    positions = located.groupBy("user_id").agg(
        F.max(F.struct("ts", "message_id", "lat", "lon", "zone_id")).alias("p")
    ).select("user_id", "p.lat", "p.lon", "p.zone_id")
    # 1-km cells of the points on a sphere of the Earth's radius: two points within 1 km
    # (great circle, hence also in a straight line) are in the same or neighbouring cells.
    rad = F.radians
    xyz = [EARTH_KM * F.cos(rad("lat")) * F.cos(rad("lon")),
           EARTH_KM * F.cos(rad("lat")) * F.sin(rad("lon")),
           EARTH_KM * F.sin(rad("lat"))]
    celled = positions.select("*", *[F.floor(c).alias(f"c{i}") for i, c in enumerate(xyz)])
    offsets = F.array(*[F.array(F.lit(a), F.lit(b), F.lit(c))
                        for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)])
    near = celled.select(
        F.col("user_id").alias("l"), F.col("lat").alias("llat"), F.col("lon").alias("llon"),
        "zone_id", F.explode(offsets).alias("o"), "c0", "c1", "c2"
    ).select("l", "llat", "llon", "zone_id", *[(F.col(f"c{i}") + F.col("o")[i]).alias(f"c{i}")
                                               for i in range(3)])
    right = celled.select(F.col("user_id").alias("r"), F.col("lat").alias("rlat"),
                          F.col("lon").alias("rlon"), "c0", "c1", "c2")
    pairs = near.join(right, ["c0", "c1", "c2"]).where(
        (F.col("l") < F.col("r")) & (km(F.col("llat"), F.col("llon"), F.col("rlat"),
                                        F.col("rlon")) <= 1.0)
    ).select("l", "r", "zone_id")
    subscriptions = ev.where(ev.kind == "subscription").select("user_id", "channel").distinct()
    common = pairs.join(subscriptions.withColumnRenamed("user_id", "l"), "l") \
        .join(subscriptions.withColumnRenamed("user_id", "r"), ["r", "channel"]) \
        .select("l", "r", "zone_id").distinct()
    direct = ev.where((ev.kind == "message") & ev.message_to.isNotNull()).select(
        F.least("user_id", "message_to").alias("l"),
        F.greatest("user_id", "message_to").alias("r")).distinct()
    return common.join(direct, ["l", "r"], "left_anti").select(
        F.col("l").alias("user_left"), F.col("r").alias("user_right"), "zone_id")


TABLES = {
    "zones": ("month date, week date, zone_id int, week_message bigint, week_reaction bigint, "
              "week_subscription bigint, week_user bigint, month_message bigint, "
              "month_reaction bigint, month_subscription bigint, month_user bigint"),
    "users": ("user_id bigint, act_city text, home_city text, travel_count int, "
              "travel_array text[], local_time timestamp"),
    "recommendations": "user_left bigint, user_right bigint, zone_id int",
}


def jdbc_url(dsn):
    """The JDBC URL of a libpq key=value connection string."""
    kv = dict(part.split("=", 1) for part in dsn.split())
    return (f"jdbc:postgresql://{kv.get('host', '127.0.0.1')}:{kv.get('port', '5432')}/"
            f"{kv['dbname']}?user={kv.get('user', 'postgres')}"
            # Strings into timestamp columns; one multi-row INSERT per batch.
            "&stringtype=unspecified&reWriteBatchedInserts=true")


def main():
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", required=True, nargs="+", help="JSON-lines files of events")
    parser.add_argument("--dsn", required=True, help="Postgres connection (cities in, marts out)")
    parser.add_argument("--schema", default="spark", help="schema of the output tables")
    parser.add_argument("--timings", help="write the phases' seconds here (JSON)")
    args = parser.parse_args()

    with psycopg.connect(args.dsn) as conn:
        cities = [dict(zip(("id", "city", "lat", "lng", "timezone"), row)) for row in
                  conn.execute("SELECT id, city, lat, lng, timezone FROM geo.cities ORDER BY id")]
    spark = (SparkSession.builder.appName("geo marts")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.ui.enabled", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    session = time.monotonic()
    ev = events(spark, args.events, cities).cache()
    located = ev.where((ev.kind == "message") & ev.zone_id.isNotNull()).cache()
    marts = {
        "zones": zone_mart(ev),
        "users": user_mart(located),
        "recommendations": recommendations(ev, located),
    }
    for name in marts:
        marts[name] = marts[name].cache()
        marts[name].count()
    computed = time.monotonic()
    with psycopg.connect(args.dsn) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {args.schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {args.schema}")
        for name in marts:
            conn.execute(f"CREATE TABLE {args.schema}.{name} ({TABLES[name]})")
    url = jdbc_url(args.dsn)
    for name, frame in marts.items():
        columns = [c.split()[0] for c in TABLES[name].split(", ")]
        frame.select(*columns).write.jdbc(
            url, f"{args.schema}.{name}", mode="append",
            properties={"driver": "org.postgresql.Driver", "batchsize": "10000"})
    written = time.monotonic()
    spark.stop()
    if args.timings:
        with open(args.timings, "w") as out:
            json.dump({"session_s": session - started, "compute_s": computed - session,
                       "write_s": written - computed}, out)


if __name__ == "__main__":
    main()
