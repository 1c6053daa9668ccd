//! Postgres sinks of the orders job: STG upserts, Data Vault inserts, CDM counter upserts.
//!
//! ```text
//!   SinkWriter::write(updates)  (sorted by time, retractions first)
//!     sinks::postgres::TableWriter: one transaction per batch, retried on a new connection
//!     while the error is transient; every statement is idempotent:
//!       stg.order_events   INSERT … ON CONFLICT (object_id) DO UPDATE … WHERE changed
//!       dds.h_* / dds.l_*  INSERT … ON CONFLICT DO NOTHING          (inserted once)
//!       dds.s_*            INSERT … WHERE hashdiff ≠ the key's latest row's hashdiff
//!       cdm.*_counters     INSERT … ON CONFLICT DO UPDATE … WHERE changed;  DELETE at 0
//!       cdm.user_tags      INSERT … ON CONFLICT DO NOTHING (since kept);    DELETE when lost
//!       cdm.orders_summary INSERT … ON CONFLICT DO UPDATE … WHERE changed;  DELETE when gone
//! ```
//!
//! Rows go in bulk, as arrays (`unnest`), one statement per table and chunk. Because every
//! statement is idempotent, a batch retried after an ambiguous COMMIT, a replay after a
//! restart, or the same data delivered twice leaves every table byte-identical.
//!
//! * STG and counters keep only the last change of a key within a batch (their rows hold
//!   the current value); satellites write every change in time order (their rows are the
//!   history), a key at most once per statement.
//! * Hubs and links are never deleted, satellites never updated (Data Vault is insert-only);
//!   retractions reach only the counters, where a key whose count reached 0 is deleted.
//! * `load_dt` is the logical time of the change (when the job read what caused it, UTC);
//!   `load_src` is [`LOAD_SRC`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::NaiveDateTime;
use dataflows::orders::{
    BusinessId, Counter, CounterKind, EnrichedOrder, HubKind, LinkKind, NAMESPACE, OrderEvent,
    SatelliteKind, SummaryRow, UserTag, VaultRow, dds_message, hashdiff,
};
use dataflows::{Diff, Time};
use postgres::Transaction;
use postgres::types::ToSql;
use uuid::Uuid;

use crate::pg;
use crate::sinks::kafka::KafkaMessage;
use crate::sinks::postgres::{
    CHUNK, Column, TableBatch, execute, last_per_key, ledger_changed, puts_and_deletes, query,
};

/// `load_src` of every DDS row dishflow writes.
pub const LOAD_SRC: &str = "orders-system-kafka";

/// The logical time `time` as a UTC timestamp (`load_dt`).
pub fn load_dt(time: Time) -> NaiveDateTime {
    crate::clock::utc(time)
}

/// `stg.order_events`, upserted by `object_id`.
pub struct StgBatch;

const STG_UPSERT: &str = "
INSERT INTO stg.order_events AS e (object_id, object_type, sent_dttm, payload)
SELECT id, kind, sent, payload::json
FROM unnest($1::int4[], $2::text[], $3::timestamp[], $4::text[]) AS n(id, kind, sent, payload)
ON CONFLICT (object_id) DO UPDATE SET
    object_type = excluded.object_type, sent_dttm = excluded.sent_dttm, payload = excluded.payload
WHERE (e.object_type, e.sent_dttm, e.payload::text)
      IS DISTINCT FROM (excluded.object_type, excluded.sent_dttm, excluded.payload::text)";

impl TableBatch<Arc<OrderEvent>> for StgBatch {
    fn name(&self) -> &'static str {
        "stg sink"
    }

    fn write(
        &mut self,
        tx: &mut Transaction<'_>,
        updates: &[(Arc<OrderEvent>, Time, Diff)],
    ) -> Result<Vec<KafkaMessage>> {
        let puts: Vec<&Arc<OrderEvent>> = last_per_key(updates, |e| e.object_id)
            .into_iter()
            .filter_map(|(e, put)| put.then_some(e))
            .collect();
        for chunk in puts.chunks(CHUNK) {
            let columns = [
                Column::Int(chunk.iter().map(|e| e.object_id).collect()),
                Column::Text(chunk.iter().map(|e| e.object_type.clone()).collect()),
                Column::Timestamp(chunk.iter().map(|e| e.sent_dttm).collect()),
                Column::Text(chunk.iter().map(|e| e.payload.clone()).collect()),
            ];
            execute(tx, STG_UPSERT, &columns, "stg.order_events")?;
        }
        Ok(Vec::new())
    }
}

/// The Data Vault: hubs and links inserted once, satellites appended on change.
pub struct VaultBatch;

fn hub_table(kind: HubKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        HubKind::User => ("dds.h_user", "h_user_pk", "user_id"),
        HubKind::Product => ("dds.h_product", "h_product_pk", "product_id"),
        HubKind::Category => ("dds.h_category", "h_category_pk", "category_name"),
        HubKind::Restaurant => ("dds.h_restaurant", "h_restaurant_pk", "restaurant_id"),
        HubKind::Order => ("dds.h_order", "h_order_pk", "order_id"),
    }
}

fn link_table(kind: LinkKind) -> (&'static str, [&'static str; 3]) {
    match kind {
        LinkKind::OrderProduct => (
            "dds.l_order_product",
            ["hk_order_product_pk", "h_order_pk", "h_product_pk"],
        ),
        LinkKind::ProductRestaurant => (
            "dds.l_product_restaurant",
            [
                "hk_product_restaurant_pk",
                "h_product_pk",
                "h_restaurant_pk",
            ],
        ),
        LinkKind::ProductCategory => (
            "dds.l_product_category",
            ["hk_product_category_pk", "h_product_pk", "h_category_pk"],
        ),
        LinkKind::OrderUser => (
            "dds.l_order_user",
            ["hk_order_user_pk", "h_order_pk", "h_user_pk"],
        ),
    }
}

/// (table, hub key column, attribute columns with their SQL types, hashdiff column).
fn satellite_table(
    kind: SatelliteKind,
) -> (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
) {
    match kind {
        SatelliteKind::UserNames => (
            "dds.s_user_names",
            "h_user_pk",
            &[("username", "varchar"), ("userlogin", "varchar")],
            "hk_user_names_hashdiff",
        ),
        SatelliteKind::ProductNames => (
            "dds.s_product_names",
            "h_product_pk",
            &[("name", "varchar")],
            "hk_product_names_hashdiff",
        ),
        SatelliteKind::RestaurantNames => (
            "dds.s_restaurant_names",
            "h_restaurant_pk",
            &[("name", "varchar")],
            "hk_restaurant_names_hashdiff",
        ),
        SatelliteKind::OrderCost => (
            "dds.s_order_cost",
            "h_order_pk",
            &[("cost", "numeric"), ("payment", "numeric")],
            "hk_order_cost_hashdiff",
        ),
        SatelliteKind::OrderStatus => (
            "dds.s_order_status",
            "h_order_pk",
            &[("status", "varchar")],
            "hk_order_status_hashdiff",
        ),
    }
}

/// Hub rows of one kind: (key, business id), with their times.
type HubRows<'a> = Vec<(Uuid, &'a BusinessId, Time)>;

/// Link rows of one kind: (key, the two hub keys), with their times.
type LinkRows = Vec<(Uuid, (Uuid, Uuid), Time)>;

/// Satellite rows of one kind: (hub key, attribute values), with their times.
type SatelliteRows<'a> = Vec<(Uuid, &'a [String], Time)>;

impl VaultBatch {
    fn hubs(tx: &mut Transaction<'_>, kind: HubKind, rows: &HubRows) -> Result<()> {
        let (table, pk, id) = hub_table(kind);
        for chunk in rows.chunks(CHUNK) {
            let keys = Column::Uuid(chunk.iter().map(|r| r.0).collect());
            let loads = Column::Timestamp(chunk.iter().map(|r| load_dt(r.2)).collect());
            let src = Column::Text(vec![LOAD_SRC.to_string(); chunk.len()]);
            if kind == HubKind::Order {
                let orders = chunk
                    .iter()
                    .map(|r| match r.1 {
                        BusinessId::Order { id, date } => Ok((*id, *date)),
                        BusinessId::Text(id) => bail!("order hub row {id:?} without an order id"),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let ids = Column::Int(orders.iter().map(|o| o.0).collect());
                let dates = Column::Timestamp(orders.iter().map(|o| o.1).collect());
                let sql = format!(
                    "INSERT INTO {table} ({pk}, {id}, order_dt, load_dt, load_src) \
                     SELECT * FROM unnest($1::uuid[], $2::int4[], $3::timestamp[], \
                     $4::timestamp[], $5::text[]) ON CONFLICT DO NOTHING"
                );
                execute(tx, &sql, &[keys, ids, dates, loads, src], table)?;
            } else {
                let ids = Column::Text(chunk.iter().map(|r| r.1.text()).collect());
                let sql = format!(
                    "INSERT INTO {table} ({pk}, {id}, load_dt, load_src) \
                     SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamp[], $4::text[]) \
                     ON CONFLICT DO NOTHING"
                );
                execute(tx, &sql, &[keys, ids, loads, src], table)?;
            }
        }
        Ok(())
    }

    fn links(
        tx: &mut Transaction<'_>,
        kind: LinkKind,
        rows: &[(Uuid, (Uuid, Uuid), Time)],
    ) -> Result<()> {
        let (table, [pk, a, b]) = link_table(kind);
        let sql = format!(
            "INSERT INTO {table} ({pk}, {a}, {b}, load_dt, load_src) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::timestamp[], $5::text[]) \
             ON CONFLICT DO NOTHING"
        );
        for chunk in rows.chunks(CHUNK) {
            let columns = [
                Column::Uuid(chunk.iter().map(|r| r.0).collect()),
                Column::Uuid(chunk.iter().map(|r| r.1.0).collect()),
                Column::Uuid(chunk.iter().map(|r| r.1.1).collect()),
                Column::Timestamp(chunk.iter().map(|r| load_dt(r.2)).collect()),
                Column::Text(vec![LOAD_SRC.to_string(); chunk.len()]),
            ];
            execute(tx, &sql, &columns, table)?;
        }
        Ok(())
    }

    /// Appends the satellite rows whose hashdiff differs from their key's latest row; a key
    /// at most once per statement, so a key's changes are written in time order.
    fn satellites(
        tx: &mut Transaction<'_>,
        kind: SatelliteKind,
        rows: &[(Uuid, &[String], Time)],
    ) -> Result<()> {
        let (table, pk, attributes, hashdiff_column) = satellite_table(kind);
        let n = attributes.len();
        let names: Vec<&str> = attributes.iter().map(|(name, _)| *name).collect();
        let casts: Vec<String> = attributes
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("n.a{i}::{ty}"))
            .collect();
        let aliases: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
        let arrays: Vec<String> = (0..n).map(|i| format!("${}::text[]", i + 2)).collect();
        let sql = format!(
            "INSERT INTO {table} ({pk}, {names}, load_dt, load_src, {hashdiff_column}) \
             SELECT n.pk, {casts}, n.load_dt, n.load_src, n.hashdiff \
             FROM unnest($1::uuid[], {arrays}, ${t}::timestamp[], ${s}::text[], ${h}::uuid[]) \
                  AS n(pk, {aliases}, load_dt, load_src, hashdiff) \
             WHERE n.hashdiff IS DISTINCT FROM ( \
                 SELECT s.{hashdiff_column} FROM {table} s WHERE s.{pk} = n.pk \
                 ORDER BY s.load_dt DESC LIMIT 1) \
             ON CONFLICT DO NOTHING",
            names = names.join(", "),
            casts = casts.join(", "),
            arrays = arrays.join(", "),
            aliases = aliases.join(", "),
            t = n + 2,
            s = n + 3,
            h = n + 4,
        );
        let mut start = 0;
        while start < rows.len() {
            // A chunk: distinct keys, at most CHUNK rows.
            let mut keys = HashSet::new();
            let mut end = start;
            while end < rows.len() && end - start < CHUNK && keys.insert(rows[end].0) {
                end += 1;
            }
            let chunk = &rows[start..end];
            let mut columns = vec![Column::Uuid(chunk.iter().map(|r| r.0).collect())];
            for i in 0..n {
                columns.push(Column::Text(
                    chunk
                        .iter()
                        .map(|r| r.1.get(i).cloned().unwrap_or_default())
                        .collect(),
                ));
            }
            columns.push(Column::Timestamp(
                chunk.iter().map(|r| load_dt(r.2)).collect(),
            ));
            columns.push(Column::Text(vec![LOAD_SRC.to_string(); chunk.len()]));
            columns.push(Column::Uuid(
                chunk.iter().map(|r| hashdiff(r.0, r.1)).collect(),
            ));
            execute(tx, &sql, &columns, table)?;
            start = end;
        }
        Ok(())
    }
}

impl TableBatch<VaultRow> for VaultBatch {
    fn name(&self) -> &'static str {
        "dds sink"
    }

    fn write(
        &mut self,
        tx: &mut Transaction<'_>,
        updates: &[(VaultRow, Time, Diff)],
    ) -> Result<Vec<KafkaMessage>> {
        let mut hubs: HashMap<HubKind, HubRows<'_>> = HashMap::new();
        let mut links: HashMap<LinkKind, LinkRows> = HashMap::new();
        let mut satellites: HashMap<SatelliteKind, SatelliteRows<'_>> = HashMap::new();
        for (row, time, diff) in updates {
            if *diff <= 0 {
                continue; // insert-only: nothing is deleted or updated
            }
            match row {
                VaultRow::Hub { kind, key, id } => {
                    hubs.entry(*kind).or_default().push((*key, id, *time))
                }
                VaultRow::Link {
                    kind,
                    key,
                    hubs: pair,
                } => links.entry(*kind).or_default().push((*key, *pair, *time)),
                VaultRow::Satellite { kind, hub, values } => satellites
                    .entry(*kind)
                    .or_default()
                    .push((*hub, values.as_slice(), *time)),
            }
        }
        // Deterministic statement order (fewer lock-order conflicts between workers).
        let mut hubs: Vec<_> = hubs.into_iter().collect();
        hubs.sort_by_key(|(kind, _)| *kind);
        for (kind, rows) in &hubs {
            Self::hubs(tx, *kind, rows)?;
        }
        let mut links: Vec<_> = links.into_iter().collect();
        links.sort_by_key(|(kind, _)| *kind);
        for (kind, rows) in &links {
            Self::links(tx, *kind, rows)?;
        }
        let mut satellites: Vec<_> = satellites.into_iter().collect();
        satellites.sort_by_key(|(kind, _)| *kind);
        for (kind, rows) in &satellites {
            Self::satellites(tx, *kind, rows)?;
        }
        Ok(Vec::new())
    }
}

/// `cdm.user_product_counters` and `cdm.user_category_counters`; with `publish`, one
/// `dds-service-orders` message per user whose counters changed (rows inserted, updated or
/// deleted — a deleted counter appears with `order_cnt` 0).
pub struct CounterBatch {
    /// Return the messages of what changed.
    pub publish: bool,
}

fn counter_table(kind: CounterKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        CounterKind::Product => ("cdm.user_product_counters", "product_id", "product_name"),
        CounterKind::Category => ("cdm.user_category_counters", "category_id", "category_name"),
    }
}

impl CounterBatch {
    /// Runs the counter statement `sql` (an upsert or a delete of rows `t`, ending with
    /// `RETURNING …` the changed counters) with `columns`; when publishing, collects the
    /// rows it changed into `changed`, else runs it without the RETURNING clause.
    fn run(
        &self,
        tx: &mut Transaction<'_>,
        sql: &str,
        columns: &[Column],
        (kind, table): (CounterKind, &str),
        changed: &mut Vec<Counter>,
    ) -> Result<()> {
        if !self.publish {
            let plain = sql.split(" RETURNING ").next().unwrap_or(sql);
            execute(tx, plain, columns, table)?;
            return Ok(());
        }
        let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(Column::param).collect();
        let rows = tx
            .query(sql, &params)
            .with_context(|| format!("cannot write {table}"))?;
        for r in rows {
            changed.push(Counter {
                kind,
                user: r.try_get(0)?,
                item: r.try_get(1)?,
                name: r.try_get::<_, String>(2)?.into(),
                count: i64::from(r.try_get::<_, i32>(3)?),
            });
        }
        Ok(())
    }
}

impl TableBatch<Counter> for CounterBatch {
    fn name(&self) -> &'static str {
        "cdm sink"
    }

    fn write(
        &mut self,
        tx: &mut Transaction<'_>,
        updates: &[(Counter, Time, Diff)],
    ) -> Result<Vec<KafkaMessage>> {
        let last = last_per_key(updates, |c| (c.kind, c.user, c.item));
        let mut changed: Vec<Counter> = Vec::new();
        for kind in [CounterKind::Product, CounterKind::Category] {
            let (table, item, name) = counter_table(kind);
            let (puts, deletes): (Vec<_>, Vec<_>) = last
                .iter()
                .filter(|(c, _)| c.kind == kind)
                .partition(|(_, put)| *put);
            for chunk in deletes.chunks(CHUNK) {
                let columns = [
                    Column::Uuid(chunk.iter().map(|(c, _)| c.user).collect()),
                    Column::Uuid(chunk.iter().map(|(c, _)| c.item).collect()),
                ];
                let sql = format!(
                    "DELETE FROM {table} t USING unnest($1::uuid[], $2::uuid[]) AS n(u, i) \
                     WHERE t.user_id = n.u AND t.{item} = n.i \
                     RETURNING t.user_id, t.{item}, t.{name}, 0"
                );
                self.run(tx, &sql, &columns, (kind, table), &mut changed)?;
            }
            for chunk in puts.chunks(CHUNK) {
                // More than 2³¹ distinct orders in one counter cannot come from real data:
                // stop rather than write a wrong count.
                let counts = chunk
                    .iter()
                    .map(|(c, _)| i32::try_from(c.count))
                    .collect::<Result<Vec<i32>, _>>()
                    .context("an order_cnt does not fit the int4 column")?;
                let columns = [
                    Column::Uuid(chunk.iter().map(|(c, _)| c.user).collect()),
                    Column::Uuid(chunk.iter().map(|(c, _)| c.item).collect()),
                    Column::Text(chunk.iter().map(|(c, _)| c.name.to_string()).collect()),
                    Column::Int(counts),
                ];
                let sql = format!(
                    "INSERT INTO {table} AS t (user_id, {item}, {name}, order_cnt) \
                     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int4[]) \
                     ON CONFLICT (user_id, {item}) DO UPDATE SET \
                         {name} = excluded.{name}, order_cnt = excluded.order_cnt \
                     WHERE (t.{name}, t.order_cnt) IS DISTINCT FROM (excluded.{name}, excluded.order_cnt) \
                     RETURNING t.user_id, t.{item}, t.{name}, t.order_cnt"
                );
                self.run(tx, &sql, &columns, (kind, table), &mut changed)?;
            }
        }
        if !self.publish {
            return Ok(Vec::new());
        }
        let mut by_user: BTreeMap<Uuid, Vec<&Counter>> = BTreeMap::new();
        for counter in &changed {
            by_user.entry(counter.user).or_default().push(counter);
        }
        by_user
            .into_iter()
            .map(|(user, counters)| {
                Ok(KafkaMessage {
                    key: Some(user.to_string().into_bytes()),
                    value: Some(serde_json::to_vec(&dds_message(user, counters))?),
                    headers: Vec::new(),
                })
            })
            .collect()
    }
}

/// Every counter in the two CDM tables (what a run's counters are compared with).
pub fn existing_counters(url: &str) -> Result<Vec<Counter>> {
    let mut client = pg::connect(url)?;
    let mut counters = Vec::new();
    for kind in [CounterKind::Product, CounterKind::Category] {
        let (table, item, name) = counter_table(kind);
        let rows = client
            .query(
                &format!("SELECT user_id, {item}, {name}, order_cnt FROM {table}"),
                &[],
            )
            .with_context(|| format!("cannot read {table}"))?;
        for r in rows {
            counters.push(Counter {
                kind,
                user: r.try_get(0)?,
                item: r.try_get(1)?,
                name: r.try_get::<_, String>(2)?.into(),
                count: i64::from(r.try_get::<_, i32>(3)?),
            });
        }
    }
    Ok(counters)
}

/// `cdm.user_tags`: a tag gained is inserted with `since` = the logical time it was gained
/// (a row already there keeps its `since`: a replay changes nothing), a tag lost is deleted.
/// With `publish`, a message per row inserted (the row as JSON) or deleted (a tombstone),
/// key `<user_id>:<tag>`.
pub struct UserTagBatch {
    /// Whether the changes go to the tag topic.
    pub publish: bool,
}

const TAGS_INSERT: &str = "
INSERT INTO cdm.user_tags (user_id, tag, since)
SELECT n.u, n.tag, n.at AT TIME ZONE 'UTC'
FROM unnest($1::uuid[], $2::text[], $3::timestamp[]) AS n(u, tag, at)
ON CONFLICT (user_id, tag) DO NOTHING
RETURNING user_id, tag, to_char(since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

const TAGS_DELETE: &str = "
DELETE FROM cdm.user_tags t
USING unnest($1::uuid[], $2::text[]) AS d(u, tag)
WHERE t.user_id = d.u AND t.tag = d.tag
RETURNING t.user_id, t.tag";

/// The table of [`UserTagBatch`], for errors.
const USER_TAGS: &str = "cdm.user_tags";

impl TableBatch<UserTag> for UserTagBatch {
    fn name(&self) -> &'static str {
        "tag sink"
    }

    fn write(
        &mut self,
        tx: &mut Transaction<'_>,
        updates: &[(UserTag, Time, Diff)],
    ) -> Result<Vec<KafkaMessage>> {
        let (puts, deletes) = puts_and_deletes(updates, |t| (t.user, t.tag.clone()));
        let key = |user: Uuid, tag: &str| Some(format!("{user}:{tag}").into_bytes());
        let mut messages = Vec::new();
        for chunk in deletes.chunks(CHUNK) {
            let columns = [
                Column::Uuid(chunk.iter().map(|t| t.user).collect()),
                Column::Text(chunk.iter().map(|t| t.tag.clone()).collect()),
            ];
            for row in query(tx, TAGS_DELETE, &columns, USER_TAGS)? {
                let (user, tag): (Uuid, String) = (row.try_get(0)?, row.try_get(1)?);
                messages.push(KafkaMessage {
                    key: key(user, &tag),
                    value: None,
                    headers: Vec::new(),
                });
            }
        }
        for chunk in puts.chunks(CHUNK) {
            let columns = [
                Column::Uuid(chunk.iter().map(|(t, _)| t.user).collect()),
                Column::Text(chunk.iter().map(|(t, _)| t.tag.clone()).collect()),
                Column::Timestamp(chunk.iter().map(|(_, at)| crate::clock::utc(*at)).collect()),
            ];
            for row in query(tx, TAGS_INSERT, &columns, USER_TAGS)? {
                let (user, tag): (Uuid, String) = (row.try_get(0)?, row.try_get(1)?);
                let value = serde_json::json!({
                    "user_id": user.to_string(),
                    "tag": tag,
                    "since": row.try_get::<_, String>(2)?,
                });
                messages.push(KafkaMessage {
                    key: key(user, &tag),
                    value: Some(serde_json::to_vec(&value)?),
                    headers: Vec::new(),
                });
            }
        }
        Ok(if self.publish { messages } else { Vec::new() })
    }
}

/// `cdm.orders_summary`: the changed rows upserted with `changed_at` = the logical time of
/// the change (an unchanged row is not touched), a key gone deleted.
pub struct SummaryBatch;

const SUMMARY_UPSERT: &str = "
INSERT INTO cdm.orders_summary AS s (kind, name, users, orders, changed_at)
SELECT n.kind, n.name, n.users, n.orders, n.at AT TIME ZONE 'UTC'
FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::timestamp[])
    AS n(kind, name, users, orders, at)
ON CONFLICT (kind, name) DO UPDATE SET
    users = excluded.users, orders = excluded.orders, changed_at = excluded.changed_at
WHERE (s.users, s.orders) IS DISTINCT FROM (excluded.users, excluded.orders)";

const SUMMARY_DELETE: &str = "
DELETE FROM cdm.orders_summary s
USING unnest($1::text[], $2::text[]) AS d(kind, name)
WHERE s.kind = d.kind AND s.name = d.name";

/// The table of [`SummaryBatch`], for errors.
const SUMMARY: &str = "cdm.orders_summary";

impl TableBatch<SummaryRow> for SummaryBatch {
    fn name(&self) -> &'static str {
        "orders summary sink"
    }

    fn write(
        &mut self,
        tx: &mut Transaction<'_>,
        updates: &[(SummaryRow, Time, Diff)],
    ) -> Result<Vec<KafkaMessage>> {
        let (puts, deletes) = puts_and_deletes(updates, |r| (r.kind, r.name.clone()));
        for chunk in deletes.chunks(CHUNK) {
            let columns = [
                Column::Text(chunk.iter().map(|r| r.kind.as_str().to_string()).collect()),
                Column::Text(chunk.iter().map(|r| r.name.clone()).collect()),
            ];
            execute(tx, SUMMARY_DELETE, &columns, SUMMARY)?;
        }
        for chunk in puts.chunks(CHUNK) {
            let columns = [
                Column::Text(
                    chunk
                        .iter()
                        .map(|(r, _)| r.kind.as_str().to_string())
                        .collect(),
                ),
                Column::Text(chunk.iter().map(|(r, _)| r.name.clone()).collect()),
                Column::BigInt(chunk.iter().map(|(r, _)| r.users).collect()),
                Column::BigInt(chunk.iter().map(|(r, _)| r.orders).collect()),
                Column::Timestamp(chunk.iter().map(|(_, at)| crate::clock::utc(*at)).collect()),
            ];
            execute(tx, SUMMARY_UPSERT, &columns, SUMMARY)?;
        }
        Ok(Vec::new())
    }
}

/// Every row of `cdm.orders_summary` (what a run's summary is compared with).
pub fn existing_summary(url: &str) -> Result<Vec<SummaryRow>> {
    use dataflows::orders::SummaryKind;
    let rows = pg::connect(url)?
        .query(
            "SELECT kind, name, users, orders FROM cdm.orders_summary",
            &[],
        )
        .context("cannot read cdm.orders_summary")?;
    rows.iter()
        .map(|r| {
            let kind = match r.try_get::<_, &str>(0)? {
                "category" => SummaryKind::Category,
                "product" => SummaryKind::Product,
                "tag" => SummaryKind::Tag,
                other => bail!("cdm.orders_summary: unknown kind {other:?}"),
            };
            Ok(SummaryRow {
                kind,
                name: r.try_get(1)?,
                users: r.try_get(2)?,
                orders: r.try_get(3)?,
            })
        })
        .collect()
}

/// Every row of `cdm.user_tags` (what a run's tags are compared with).
pub fn existing_tags(url: &str) -> Result<Vec<UserTag>> {
    let rows = pg::connect(url)?
        .query("SELECT user_id, tag FROM cdm.user_tags", &[])
        .context("cannot read cdm.user_tags")?;
    rows.iter()
        .map(|r| {
            Ok(UserTag {
                user: r.try_get(0)?,
                tag: r.try_get(1)?,
            })
        })
        .collect()
}

/// The `stg-service-orders` messages: one per enriched order version, decided by the ledger
/// `public.dishflow_published` (job, key = object_id, digest of the message): a message is
/// sent when its order's digest is new or changed, so a replay or re-delivery sends nothing
/// twice, while a new version or a renamed dictionary entry sends the order again.
pub struct PublishedBatch {
    /// The ledger's job name.
    pub job: String,
}

impl TableBatch<EnrichedOrder> for PublishedBatch {
    fn name(&self) -> &'static str {
        "stg-service-orders sink"
    }

    fn write(
        &mut self,
        tx: &mut Transaction<'_>,
        updates: &[(EnrichedOrder, Time, Diff)],
    ) -> Result<Vec<KafkaMessage>> {
        let mut messages = Vec::new();
        let puts: Vec<&EnrichedOrder> = last_per_key(updates, |o| o.id)
            .into_iter()
            .filter_map(|(o, put)| put.then_some(o))
            .collect();
        for chunk in puts.chunks(CHUNK) {
            let values: Vec<Vec<u8>> = chunk
                .iter()
                .map(|o| serde_json::to_vec(&o.stg_message()))
                .collect::<Result<_, _>>()?;
            let keys: Vec<String> = chunk.iter().map(|o| o.id.to_string()).collect();
            let digests: Vec<Uuid> = values.iter().map(|v| Uuid::new_v5(&NAMESPACE, v)).collect();
            let changed = ledger_changed(tx, &self.job, &keys, &digests)?;
            for (key, value) in keys.into_iter().zip(values) {
                if changed.contains(&key) {
                    messages.push(KafkaMessage {
                        key: Some(key.into_bytes()),
                        value: Some(value),
                        headers: Vec::new(),
                    });
                }
            }
        }
        Ok(messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_dt_is_the_logical_time_in_utc() {
        assert_eq!(
            load_dt(1_668_874_000_123).to_string(),
            "2022-11-19 16:06:40.123"
        );
    }
}
