//! Postgres connections and the schema the jobs need (`dishflow setup`).

use anyhow::{Context, Result, anyhow, bail};
use dataflows::geo::cities::City;
use postgres::{Client, Transaction};

/// The default Postgres URL: the local server's database `de`.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/de";

pub mod roles;
pub mod tls;

/// Connects to `url` (TLS per its `sslmode`, see [`tls`]), with an error that names the
/// server but never the password.
pub fn connect(url: &str) -> Result<Client> {
    let (url, tls) = tls::Tls::split(url)?;
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| anyhow!("invalid Postgres URL: {e}"))?;
    config.ssl_mode(tls.ssl_mode());
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    config.application_name("dishflow");
    // NOTICEs ("relation already exists, skipping") are not worth a log line.
    let options = format!(
        "{} -c client_min_messages=warning",
        config.get_options().unwrap_or_default()
    );
    config.options(options.trim());
    let connector = tls.connector()?;
    config.connect(connector).map_err(|e| {
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                postgres::config::Host::Tcp(h) => h.clone(),
                postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let db = config.get_dbname().unwrap_or("(default)");
        // The driver's message alone can be vague ("error performing TLS handshake"): add its
        // causes (e.g. "certificate verify failed").
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(inner) = cause {
            let text = inner.to_string();
            if !message.contains(&text) {
                message = format!("{message}: {text}");
            }
            cause = inner.source();
        }
        anyhow!(
            "cannot connect to Postgres at {} database {db}: {message}",
            hosts.join(",")
        )
    })
}

/// The input table of the promos job, exactly as its owner creates it.
pub const SUBSCRIBERS_DDL: &str = "
CREATE TABLE IF NOT EXISTS public.subscribers_restaurants (
    id serial4 NOT NULL,
    client_id varchar NOT NULL,
    restaurant_id varchar NOT NULL,
    CONSTRAINT pk_id PRIMARY KEY (id)
)";

/// The output table of the promos job, exactly as in the SPEC, plus the unique index that
/// makes writing it idempotent. The index compares bytes (`COLLATE "C"`): uniqueness is the
/// same under any deterministic collation, and a bulk upsert of 2M rows runs ~20–30% faster
/// than with the database's libc collation (measured on PostgreSQL 15, C.UTF-8). An index
/// created by an earlier version (same name) is kept as it is.
pub const FEEDBACK_DDL: &str = "
CREATE TABLE IF NOT EXISTS public.subscribers_feedback (
    id serial4 NOT NULL,
    restaurant_id text NOT NULL,
    adv_campaign_id text NOT NULL,
    adv_campaign_content text NOT NULL,
    adv_campaign_owner text NOT NULL,
    adv_campaign_owner_contact text NOT NULL,
    adv_campaign_datetime_start int8 NOT NULL,
    adv_campaign_datetime_end int8 NOT NULL,
    datetime_created int8 NOT NULL,
    client_id text NOT NULL,
    trigger_datetime_created int4 NOT NULL,
    feedback varchar NULL,
    CONSTRAINT id_pk PRIMARY KEY (id)
);
CREATE UNIQUE INDEX IF NOT EXISTS subscribers_feedback_campaign_client_uq
    ON public.subscribers_feedback (adv_campaign_id COLLATE \"C\", client_id COLLATE \"C\")";

/// The promos job's summaries for the dashboard: per campaign (`mart.promo_campaigns`) and
/// per hour of `trigger_datetime_created` (`mart.promo_hours`), the drafts sent (counted by
/// the feedback sink in the transaction that inserts their rows) and how many of their rows
/// have `feedback` (kept by a trigger on the feedback column, which the app fills). Each is
/// created with the counts of the rows already in `public.subscribers_feedback`. The
/// trigger function runs as its owner, so the app that fills `feedback` needs no grant on
/// `mart`.
pub const PROMO_SUMMARY_DDL: &str = "
CREATE SCHEMA IF NOT EXISTS mart;
DO $$
BEGIN
    IF to_regclass('mart.promo_campaigns') IS NULL THEN
        CREATE TABLE mart.promo_campaigns (
            adv_campaign_id text PRIMARY KEY, restaurant_id text NOT NULL,
            drafts bigint NOT NULL, feedback bigint NOT NULL, changed_at timestamptz NOT NULL);
        INSERT INTO mart.promo_campaigns
        SELECT adv_campaign_id,
               (array_agg(restaurant_id ORDER BY datetime_created DESC, id DESC))[1],
               count(*), count(feedback), now()
        FROM public.subscribers_feedback GROUP BY 1;
    END IF;
    IF to_regclass('mart.promo_hours') IS NULL THEN
        CREATE TABLE mart.promo_hours (
            hour timestamptz PRIMARY KEY, drafts bigint NOT NULL, feedback bigint NOT NULL,
            changed_at timestamptz NOT NULL);
        INSERT INTO mart.promo_hours
        SELECT to_timestamp(trigger_datetime_created - trigger_datetime_created % 3600),
               count(*), count(feedback), now()
        FROM public.subscribers_feedback GROUP BY 1;
    END IF;
END $$;
CREATE OR REPLACE FUNCTION mart.promo_feedback_counts() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    change int := CASE WHEN NEW.feedback IS NULL THEN -1 ELSE 1 END;
BEGIN
    UPDATE mart.promo_campaigns SET feedback = feedback + change, changed_at = now()
    WHERE adv_campaign_id = NEW.adv_campaign_id;
    UPDATE mart.promo_hours SET feedback = feedback + change, changed_at = now()
    WHERE hour = to_timestamp(NEW.trigger_datetime_created
                              - NEW.trigger_datetime_created % 3600);
    RETURN NULL;
END $$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgname = 'dishflow_promo_feedback_counts'
                     AND tgrelid = 'public.subscribers_feedback'::regclass) THEN
        CREATE TRIGGER dishflow_promo_feedback_counts
            AFTER UPDATE OF feedback ON public.subscribers_feedback FOR EACH ROW
            WHEN ((OLD.feedback IS NULL) <> (NEW.feedback IS NULL))
            EXECUTE FUNCTION mart.promo_feedback_counts();
    END IF;
END $$";

/// With `--envelope upsert`, what the notification topic last says of each draft key still
/// of interest: `live` (a draft, until its retraction) or not (a tombstone, kept until the
/// campaign's end: a draft that comes back unchanged before then is sent again). Written in
/// the transaction of the feedback rows, so that a restart knows which drafts to tombstone
/// (their campaign ended or their subscriber left while the job was down) and which to send
/// again (see `jobs::promos::feedback`).
pub const DRAFT_KEYS_DDL: &str = "
CREATE TABLE IF NOT EXISTS public.dishflow_draft_keys (
    adv_campaign_id text NOT NULL,
    client_id text NOT NULL,
    live boolean NOT NULL,
    campaign_end int8 NOT NULL,
    PRIMARY KEY (adv_campaign_id, client_id)
);
CREATE INDEX IF NOT EXISTS dishflow_draft_keys_tombstoned
    ON public.dishflow_draft_keys (campaign_end) WHERE NOT live";

/// dishflow's own bookkeeping tables, shared by all jobs (rows are keyed by job):
/// * `dishflow_outbox`: Kafka messages decided in a Postgres transaction and not yet
///   confirmed delivered (see `sinks::outbox`); normally empty between batches.
/// * `dishflow_outbox_marks`: per writer and output partition, an offset before which none
///   of the writer's unconfirmed messages can be (where a read-back starts).
/// * `dishflow_progress`: per source partition, where a restarted job resumes reading
///   (`resume_offset`) and from where it replays to rebuild its state (`replay_offset`).
pub const BOOKKEEPING_DDL: &str = "
CREATE SEQUENCE IF NOT EXISTS public.dishflow_outbox_seq;
CREATE TABLE IF NOT EXISTS public.dishflow_outbox (
    job text NOT NULL,
    writer int4 NOT NULL,
    seq int8 NOT NULL,
    topic text NOT NULL,
    key bytea NULL,
    value bytea NULL,
    PRIMARY KEY (job, writer, seq)
);
-- Rows are framed chunks of messages, written once and deleted soon: compressing them
-- (TOAST's default for bytea) costs more time than the space is worth.
ALTER TABLE public.dishflow_outbox ALTER COLUMN value SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS public.dishflow_outbox_marks (
    job text NOT NULL,
    writer int4 NOT NULL,
    topic text NOT NULL,
    partition int4 NOT NULL,
    next_offset int8 NOT NULL,
    PRIMARY KEY (job, writer, topic, partition)
);
CREATE TABLE IF NOT EXISTS public.dishflow_published (
    job text NOT NULL,
    key text NOT NULL,
    digest uuid NOT NULL,
    PRIMARY KEY (job, key)
);
CREATE TABLE IF NOT EXISTS public.dishflow_progress (
    job text NOT NULL,
    topic text NOT NULL,
    partition int4 NOT NULL,
    resume_offset int8 NOT NULL,
    replay_offset int8 NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, topic, partition)
)";

/// The orders job's layers (SPEC, Job 2). Hubs, links and satellites have no foreign keys:
/// they are loaded in parallel by different workers (a link can commit before its hub), as
/// Data Vault loads usually are; every key is derived, so the references hold once a batch
/// time is written by all workers.
pub const ORDERS_DDL: &str = "
CREATE SCHEMA IF NOT EXISTS stg;
CREATE TABLE IF NOT EXISTS stg.order_events (
    id serial PRIMARY KEY,
    object_id int NOT NULL UNIQUE,
    object_type varchar NOT NULL,
    sent_dttm timestamp NOT NULL,
    payload json NOT NULL
);
CREATE SCHEMA IF NOT EXISTS dds;
CREATE TABLE IF NOT EXISTS dds.h_user (
    h_user_pk uuid PRIMARY KEY, user_id varchar NOT NULL,
    load_dt timestamp NOT NULL, load_src varchar NOT NULL);
CREATE TABLE IF NOT EXISTS dds.h_product (
    h_product_pk uuid PRIMARY KEY, product_id varchar NOT NULL,
    load_dt timestamp NOT NULL, load_src varchar NOT NULL);
CREATE TABLE IF NOT EXISTS dds.h_category (
    h_category_pk uuid PRIMARY KEY, category_name varchar NOT NULL,
    load_dt timestamp NOT NULL, load_src varchar NOT NULL);
CREATE TABLE IF NOT EXISTS dds.h_restaurant (
    h_restaurant_pk uuid PRIMARY KEY, restaurant_id varchar NOT NULL,
    load_dt timestamp NOT NULL, load_src varchar NOT NULL);
CREATE TABLE IF NOT EXISTS dds.h_order (
    h_order_pk uuid PRIMARY KEY, order_id int NOT NULL, order_dt timestamp NOT NULL,
    load_dt timestamp NOT NULL, load_src varchar NOT NULL);
CREATE TABLE IF NOT EXISTS dds.l_order_product (
    hk_order_product_pk uuid PRIMARY KEY, h_order_pk uuid NOT NULL, h_product_pk uuid NOT NULL,
    load_dt timestamp NOT NULL, load_src varchar NOT NULL);
CREATE TABLE IF NOT EXISTS dds.l_product_restaurant (
    hk_product_restaurant_pk uuid PRIMARY KEY, h_product_pk uuid NOT NULL,
    h_restaurant_pk uuid NOT NULL, load_dt timestamp NOT NULL, load_src varchar NOT NULL);
CREATE TABLE IF NOT EXISTS dds.l_product_category (
    hk_product_category_pk uuid PRIMARY KEY, h_product_pk uuid NOT NULL,
    h_category_pk uuid NOT NULL, load_dt timestamp NOT NULL, load_src varchar NOT NULL);
CREATE TABLE IF NOT EXISTS dds.l_order_user (
    hk_order_user_pk uuid PRIMARY KEY, h_order_pk uuid NOT NULL, h_user_pk uuid NOT NULL,
    load_dt timestamp NOT NULL, load_src varchar NOT NULL);
CREATE TABLE IF NOT EXISTS dds.s_user_names (
    h_user_pk uuid NOT NULL, username varchar NOT NULL, userlogin varchar NOT NULL,
    load_dt timestamp NOT NULL, load_src varchar NOT NULL,
    hk_user_names_hashdiff uuid NOT NULL, PRIMARY KEY (h_user_pk, load_dt));
CREATE TABLE IF NOT EXISTS dds.s_product_names (
    h_product_pk uuid NOT NULL, name varchar NOT NULL,
    load_dt timestamp NOT NULL, load_src varchar NOT NULL,
    hk_product_names_hashdiff uuid NOT NULL, PRIMARY KEY (h_product_pk, load_dt));
CREATE TABLE IF NOT EXISTS dds.s_restaurant_names (
    h_restaurant_pk uuid NOT NULL, name varchar NOT NULL,
    load_dt timestamp NOT NULL, load_src varchar NOT NULL,
    hk_restaurant_names_hashdiff uuid NOT NULL, PRIMARY KEY (h_restaurant_pk, load_dt));
CREATE TABLE IF NOT EXISTS dds.s_order_cost (
    h_order_pk uuid NOT NULL,
    cost numeric(19, 5) NOT NULL DEFAULT 0 CHECK (cost >= 0),
    payment numeric(19, 5) NOT NULL DEFAULT 0 CHECK (payment >= 0),
    load_dt timestamp NOT NULL, load_src varchar NOT NULL,
    hk_order_cost_hashdiff uuid NOT NULL, PRIMARY KEY (h_order_pk, load_dt));
CREATE TABLE IF NOT EXISTS dds.s_order_status (
    h_order_pk uuid NOT NULL, status varchar NOT NULL,
    load_dt timestamp NOT NULL, load_src varchar NOT NULL,
    hk_order_status_hashdiff uuid NOT NULL, PRIMARY KEY (h_order_pk, load_dt));
CREATE SCHEMA IF NOT EXISTS cdm;
CREATE TABLE IF NOT EXISTS cdm.user_product_counters (
    id serial PRIMARY KEY, user_id uuid NOT NULL, product_id uuid NOT NULL,
    product_name varchar NOT NULL, order_cnt int NOT NULL CHECK (order_cnt >= 0),
    UNIQUE (user_id, product_id));
CREATE TABLE IF NOT EXISTS cdm.user_category_counters (
    id serial PRIMARY KEY, user_id uuid NOT NULL, category_id uuid NOT NULL,
    category_name varchar NOT NULL, order_cnt int NOT NULL CHECK (order_cnt >= 0),
    UNIQUE (user_id, category_id));
DO $$ BEGIN
  IF to_regclass('cdm.tag_rules') IS NULL THEN
    CREATE TABLE cdm.tag_rules (
        tag text PRIMARY KEY, category_name text, product_name text,
        min_orders int NOT NULL CHECK (min_orders > 0),
        CONSTRAINT tag_rules_one_counter
            CHECK ((category_name IS NULL) <> (product_name IS NULL)));
    -- Examples over the categories and products `dishflow produce orders` generates.
    INSERT INTO cdm.tag_rules (tag, category_name, product_name, min_orders) VALUES
        ('pizza lover', 'Пицца', NULL, 3),
        ('rolls lover', 'Роллы', NULL, 3),
        ('sweet tooth', 'Десерты', NULL, 2),
        ('soup regular', 'Супы', NULL, 5),
        ('croissant fan', NULL, 'КРУАССАН №1', 2);
  END IF;
END $$;
CREATE TABLE IF NOT EXISTS cdm.user_tags (
    user_id uuid NOT NULL, tag text NOT NULL, since timestamptz NOT NULL,
    PRIMARY KEY (user_id, tag));
CREATE TABLE IF NOT EXISTS cdm.orders_summary (
    kind text NOT NULL CHECK (kind IN ('category', 'product', 'tag')), name text NOT NULL,
    users bigint NOT NULL, orders bigint NOT NULL, changed_at timestamptz NOT NULL,
    PRIMARY KEY (kind, name))";

/// The publication through which the orders job follows `cdm.tag_rules`.
pub const TAG_RULES_PUBLICATION: &str = "dishflow_tag_rules";

/// Creates the orders job's schemas and tables (`cdm.tag_rules` with its example rules when
/// it is created), the rules' publication, and the bookkeeping tables, if missing.
pub fn setup_orders(url: &str) -> Result<()> {
    let mut client = connect(url)?;
    let mut tx = begin_setup(
        &mut client,
        &[(
            ORDERS_DDL,
            "cannot create the orders job's schemas stg, dds, cdm and their tables",
        )],
    )?;
    ensure_publication(&mut tx, TAG_RULES_PUBLICATION, "cdm.tag_rules")?;
    tx.commit()?;
    Ok(())
}

/// Opens a setup transaction, serialised across processes by an advisory lock, and runs
/// each `(ddl, what failed)` and then the bookkeeping DDL in it.
fn begin_setup<'c>(
    client: &'c mut Client,
    ddl: &[(&str, &'static str)],
) -> Result<Transaction<'c>> {
    let mut tx = client.transaction()?;
    // Arbitrary constant: the lock id of dishflow's setup.
    tx.execute("SELECT pg_advisory_xact_lock(7347230001)", &[])?;
    for (statements, what) in ddl {
        tx.batch_execute(statements).context(*what)?;
    }
    tx.batch_execute(BOOKKEEPING_DDL).context(
        "cannot create dishflow's bookkeeping tables (dishflow_outbox, dishflow_progress)",
    )?;
    Ok(tx)
}

/// The publication through which the promos job captures changes of the subscribers table.
pub const SUBSCRIBERS_PUBLICATION: &str = "dishflow_subscribers";

/// Prefix of the replication slots dishflow creates (temporary ones, one per worker).
pub const SLOT_PREFIX: &str = "dishflow_";

/// Creates the promos job's tables, index and publication if missing. Safe to run
/// concurrently from several processes (serialised by an advisory lock) and on tables
/// created by others. Warns about inactive dishflow replication slots (they retain WAL).
pub fn setup_promos(url: &str) -> Result<()> {
    let mut client = connect(url)?;
    let mut tx = begin_setup(
        &mut client,
        &[
            (
                SUBSCRIBERS_DDL,
                "cannot create public.subscribers_restaurants",
            ),
            (
                FEEDBACK_DDL,
                "cannot create public.subscribers_feedback or its unique index on \
                 (adv_campaign_id, client_id) (duplicate rows in an existing table?)",
            ),
            (
                PROMO_SUMMARY_DDL,
                "cannot create mart.promo_campaigns, mart.promo_hours or their trigger on \
                 public.subscribers_feedback",
            ),
            (DRAFT_KEYS_DDL, "cannot create public.dishflow_draft_keys"),
        ],
    )?;
    ensure_publication(
        &mut tx,
        SUBSCRIBERS_PUBLICATION,
        "public.subscribers_restaurants",
    )?;
    tx.commit()?;
    for (slot, retained) in stale_slots(&mut client)? {
        tracing::warn!(
            slot,
            retained_bytes = retained,
            "inactive dishflow replication slot retains WAL; `dishflow setup --drop` removes it"
        );
    }
    Ok(())
}

/// Creates publication `name` for `table` unless it exists.
fn ensure_publication(tx: &mut Transaction<'_>, name: &str, table: &str) -> Result<()> {
    let exists = tx
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])?
        .is_some();
    if !exists {
        tx.batch_execute(&format!("CREATE PUBLICATION {name} FOR TABLE {table}"))
            .with_context(|| {
                format!(
                    "cannot create publication {name} for {table} (needs ownership of the \
                     table, or ask its owner to create it)"
                )
            })?;
    }
    Ok(())
}

/// The publication through which the geo job follows `geo.cities`.
pub const CITIES_PUBLICATION: &str = "dishflow_cities";

const GEO_DDL: &str = "
CREATE SCHEMA IF NOT EXISTS geo;
CREATE SCHEMA IF NOT EXISTS mart;
CREATE TABLE IF NOT EXISTS geo.cities (
    id int PRIMARY KEY, city text NOT NULL CHECK (city <> ''),
    lat double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lng double precision NOT NULL CHECK (lng BETWEEN -180 AND 180),
    timezone text NOT NULL);
CREATE TABLE IF NOT EXISTS mart.geo_zones (
    month date, week date, zone_id int,
    week_message bigint, week_reaction bigint, week_subscription bigint, week_user bigint,
    month_message bigint, month_reaction bigint, month_subscription bigint, month_user bigint,
    PRIMARY KEY (zone_id, week, month));
CREATE TABLE IF NOT EXISTS mart.geo_users (
    user_id bigint PRIMARY KEY, act_city text, home_city text, travel_count int,
    travel_array text[], local_time timestamp);
CREATE TABLE IF NOT EXISTS mart.geo_friend_recommendations (
    user_left bigint, user_right bigint, processed_dttm timestamptz, zone_id int,
    local_time timestamp, PRIMARY KEY (user_left, user_right));
CREATE TABLE IF NOT EXISTS mart.geo_city_summary (
    city text PRIMARY KEY, users_now bigint NOT NULL, users_home bigint NOT NULL,
    users_at_home bigint NOT NULL, recommendations bigint NOT NULL,
    changed_at timestamptz NOT NULL)";

/// Creates the geo job's schemas `geo` and `mart`, their tables and the publication of
/// `geo.cities`, if missing. `cities` (read from a `--cities` file) are upserted by id;
/// without them, an empty `geo.cities` gets the built-in cities. A time zone Postgres does
/// not know is an error naming the city, and then nothing is written.
pub fn setup_geo(url: &str, cities: Option<Vec<City>>) -> Result<()> {
    let mut client = connect(url)?;
    let mut tx = begin_setup(
        &mut client,
        &[(
            GEO_DDL,
            "cannot create the geo job's schemas geo, mart and their tables",
        )],
    )?;
    ensure_publication(&mut tx, CITIES_PUBLICATION, "geo.cities")?;
    let cities = match cities {
        Some(cities) => cities,
        None if tx
            .query_one("SELECT count(*) FROM geo.cities", &[])?
            .get::<_, i64>(0)
            == 0 =>
        {
            dataflows::geo::cities::builtin()
        }
        None => Vec::new(),
    };
    if !cities.is_empty() {
        let zones: Vec<&str> = cities.iter().map(|c| c.timezone.as_str()).collect();
        let unknown = tx.query(
            "SELECT DISTINCT zone FROM unnest($1::text[]) AS zone \
             WHERE zone NOT IN (SELECT name FROM pg_timezone_names)",
            &[&zones],
        )?;
        if let Some(row) = unknown.first() {
            let zone: String = row.get(0);
            let city = cities.iter().find(|c| c.timezone == zone);
            bail!(
                "city {} ({}): unknown time zone {zone:?}",
                city.map_or(0, |c| c.id),
                city.map_or("", |c| c.name.as_str()),
            );
        }
        let ids: Vec<i32> = cities.iter().map(|c| c.id).collect();
        let names: Vec<&str> = cities.iter().map(|c| c.name.as_str()).collect();
        let (lats, lngs): (Vec<f64>, Vec<f64>) = cities.iter().map(|c| c.centre.degrees()).unzip();
        tx.execute(
            "INSERT INTO geo.cities (id, city, lat, lng, timezone) \
             SELECT * FROM unnest($1::int4[], $2::text[], $3::float8[], $4::float8[], $5::text[]) \
             ON CONFLICT (id) DO UPDATE SET city = excluded.city, lat = excluded.lat, \
             lng = excluded.lng, timezone = excluded.timezone",
            &[&ids, &names, &lats, &lngs, &zones],
        )
        .context("cannot write geo.cities")?;
    }
    tx.commit()?;
    if !cities.is_empty() {
        tracing::info!(cities = cities.len(), "geo.cities loaded");
    }
    Ok(())
}

/// Inactive replication slots named like dishflow's, with the WAL bytes each retains.
fn stale_slots(client: &mut Client) -> Result<Vec<(String, i64)>> {
    let rows = client.query(
        "SELECT slot_name::text, coalesce((pg_current_wal_lsn() - restart_lsn)::int8, 0) \
         FROM pg_replication_slots \
         WHERE NOT active AND database = current_database() AND starts_with(slot_name, $1)",
        &[&SLOT_PREFIX],
    )?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Removes what setup created for change capture: the publications and any inactive
/// dishflow replication slot. Tables and their data are left alone.
pub fn drop_change_capture(url: &str) -> Result<()> {
    let mut client = connect(url)?;
    for (slot, retained) in stale_slots(&mut client)? {
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .with_context(|| format!("cannot drop replication slot {slot}"))?;
        tracing::info!(slot, retained_bytes = retained, "dropped replication slot");
    }
    for publication in [
        SUBSCRIBERS_PUBLICATION,
        CITIES_PUBLICATION,
        TAG_RULES_PUBLICATION,
    ] {
        client
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {publication}"))
            .with_context(|| format!("cannot drop publication {publication}"))?;
        tracing::info!(publication, "dropped publication");
    }
    Ok(())
}
