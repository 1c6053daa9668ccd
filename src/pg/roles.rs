//! Least privilege: what each job needs of PostgreSQL, written once, and used twice — to
//! print the SQL that creates a role per job with only that (`dishflow setup
//! --print-roles`), and to check at a job's startup that the role it runs as has it, so that
//! a missing grant ends the program with one line naming the grant and the SQL that gives it.
//!
//! ```text
//!  job startup ─► every table of the job missing, or owned by the role (or a superuser)?
//!                   yes: create what is missing (`setup`), as before
//!                   no:  leave the schema alone (its owner runs `dishflow setup`)
//!               ─► check: each table exists, each privilege, schema USAGE, sequence USAGE,
//!                  REPLICATION (logical decoding of the followed table)
//! ```

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use postgres::Client;

/// Privileges of a job that only reads a table.
const READ: &str = "SELECT";
/// Privileges of a job that inserts and updates a table's rows (never deletes them).
const UPSERT: &str = "SELECT, INSERT, UPDATE";
/// Privileges of a job that keeps a table equal to its state.
const WRITE: &str = "SELECT, INSERT, UPDATE, DELETE";

/// What one job (or the dashboard) needs.
pub struct Needs {
    /// The job, as in `dishflow setup --job`.
    pub job: &'static str,
    /// Logical decoding of a followed table (replication slots).
    pub replication: bool,
    /// Tables and the privileges on each (a comma-separated list).
    pub tables: &'static [(&'static str, &'static str)],
    /// Sequences the job draws from (USAGE).
    pub sequences: &'static [&'static str],
}

/// dishflow's own bookkeeping, written by every job (outboxes, ledgers, progress).
const BOOKKEEPING: [(&str, &str); 4] = [
    ("public.dishflow_outbox", WRITE),
    ("public.dishflow_outbox_marks", WRITE),
    ("public.dishflow_published", UPSERT),
    ("public.dishflow_progress", UPSERT),
];

/// The sequence of the outbox, drawn by every job.
const OUTBOX_SEQUENCE: &str = "public.dishflow_outbox_seq";

/// The promos job.
pub const PROMOS: Needs = Needs {
    job: "promos",
    replication: true,
    tables: &[
        ("public.subscribers_restaurants", READ),
        ("public.subscribers_feedback", UPSERT),
        ("mart.promo_campaigns", UPSERT),
        ("mart.promo_hours", UPSERT),
        ("public.dishflow_draft_keys", WRITE),
        BOOKKEEPING[0],
        BOOKKEEPING[1],
        BOOKKEEPING[2],
        BOOKKEEPING[3],
    ],
    sequences: &["public.subscribers_feedback_id_seq", OUTBOX_SEQUENCE],
};

/// The orders job.
pub const ORDERS: Needs = Needs {
    job: "orders",
    replication: true,
    tables: &[
        ("cdm.tag_rules", READ),
        ("stg.order_events", WRITE),
        ("dds.h_user", WRITE),
        ("dds.h_product", WRITE),
        ("dds.h_category", WRITE),
        ("dds.h_restaurant", WRITE),
        ("dds.h_order", WRITE),
        ("dds.l_order_product", WRITE),
        ("dds.l_product_restaurant", WRITE),
        ("dds.l_product_category", WRITE),
        ("dds.l_order_user", WRITE),
        ("dds.s_user_names", WRITE),
        ("dds.s_product_names", WRITE),
        ("dds.s_restaurant_names", WRITE),
        ("dds.s_order_cost", WRITE),
        ("dds.s_order_status", WRITE),
        ("cdm.user_product_counters", WRITE),
        ("cdm.user_category_counters", WRITE),
        ("cdm.user_tags", WRITE),
        ("cdm.orders_summary", WRITE),
        BOOKKEEPING[0],
        BOOKKEEPING[1],
        BOOKKEEPING[2],
        BOOKKEEPING[3],
    ],
    sequences: &[
        "stg.order_events_id_seq",
        "cdm.user_product_counters_id_seq",
        "cdm.user_category_counters_id_seq",
        OUTBOX_SEQUENCE,
    ],
};

/// The geo job.
pub const GEO: Needs = Needs {
    job: "geo",
    replication: true,
    tables: &[
        ("geo.cities", READ),
        ("mart.geo_zones", WRITE),
        ("mart.geo_users", WRITE),
        ("mart.geo_friend_recommendations", WRITE),
        ("mart.geo_city_summary", WRITE),
        BOOKKEEPING[0],
        BOOKKEEPING[1],
        BOOKKEEPING[2],
        BOOKKEEPING[3],
    ],
    sequences: &[OUTBOX_SEQUENCE],
};

/// The dashboard: reads the marts.
pub const DASHBOARD: Needs = Needs {
    job: "dashboard",
    replication: false,
    tables: &[
        ("mart.promo_campaigns", READ),
        ("mart.promo_hours", READ),
        ("cdm.orders_summary", READ),
        ("geo.cities", READ),
        ("mart.geo_zones", READ),
        ("mart.geo_city_summary", READ),
    ],
    sequences: &[],
};

/// Every role `--print-roles` creates.
pub const ALL: [&Needs; 4] = [&PROMOS, &ORDERS, &GEO, &DASHBOARD];

/// The schemas of `needs`' tables, in order of first use.
fn schemas(needs: &Needs) -> Vec<&'static str> {
    let mut schemas: Vec<&'static str> = Vec::new();
    for (table, _) in needs.tables {
        let schema = table.split_once('.').map_or("public", |(s, _)| s);
        if !schemas.contains(&schema) {
            schemas.push(schema);
        }
    }
    schemas
}

/// Checks a `--role-prefix`: it becomes part of SQL identifiers, unquoted.
pub fn role_prefix(prefix: &str) -> Result<String, String> {
    let mut chars = prefix.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        Ok(prefix.to_string())
    } else {
        Err(format!(
            "{prefix:?}: use lower-case letters, digits and _, starting with a letter or _"
        ))
    }
}

/// The role `--print-roles` creates for `needs`: `<prefix><job>`.
pub fn role_name(prefix: &str, needs: &Needs) -> String {
    format!("{prefix}{}", needs.job)
}

/// The SQL that creates (or completes) a role per job, with only what it needs. Run it as a
/// superuser (the REPLICATION attribute needs one), in the jobs' database, after `dishflow
/// setup`; then give each role a password (`ALTER ROLE … PASSWORD …`).
pub fn roles_sql(prefix: &str) -> String {
    let mut sql = String::from(
        "-- dishflow: one role per job with only what it needs (dishflow setup --print-roles).\n\
         -- Run as a superuser in the jobs' database after `dishflow setup`; then give each\n\
         -- role a password: ALTER ROLE <role> PASSWORD '...';\n",
    );
    for needs in ALL {
        let role = role_name(prefix, needs);
        let _ = writeln!(sql, "\n-- {}", needs.job);
        let _ = writeln!(
            sql,
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN \
             CREATE ROLE {role} LOGIN; END IF; END $$;"
        );
        if needs.replication {
            let _ = writeln!(sql, "ALTER ROLE {role} REPLICATION;");
        }
        let _ = writeln!(
            sql,
            "GRANT USAGE ON SCHEMA {} TO {role};",
            schemas(needs).join(", ")
        );
        for (table, privileges) in needs.tables {
            let _ = writeln!(sql, "GRANT {privileges} ON {table} TO {role};");
        }
        for sequence in needs.sequences {
            let _ = writeln!(sql, "GRANT USAGE ON SEQUENCE {sequence} TO {role};");
        }
    }
    sql
}

/// The OID of the relation named (schema-qualified) by the SQL expression `name`, or NULL,
/// from the catalogs: unlike `to_regclass` it needs no privilege on the schema.
fn relation(name: &str) -> String {
    format!(
        "(SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE n.nspname = split_part({name}, '.', 1) AND c.relname = split_part({name}, '.', 2))"
    )
}

/// Whether the connected role may run the job's `setup`: every table of `needs` that exists
/// is owned by a role it has the privileges of (a superuser has all). Otherwise the tables
/// are someone else's, and the job leaves the schema to its owner.
pub fn owns_schema(client: &mut Client, needs: &Needs) -> Result<bool> {
    let tables: Vec<&str> = needs.tables.iter().map(|(t, _)| *t).collect();
    let t_name = relation("t.name");
    let row = client
        .query_one(
            &format!(
                "SELECT coalesce(bool_and(pg_has_role(current_user, c.relowner, 'USAGE')), true)
             FROM unnest($1::text[]) AS t(name) JOIN pg_class c ON c.oid = {t_name}"
            ),
            &[&tables],
        )
        .context("cannot read the owners of the job's tables")?;
    Ok(row.try_get(0)?)
}

/// Checks that the connected role has everything `needs` lists; an error names each thing
/// missing with the SQL that gives it, on one line.
pub fn check(client: &mut Client, needs: &Needs) -> Result<()> {
    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper, rolreplication FROM pg_roles \
             WHERE rolname = current_user",
            &[],
        )
        .context("cannot read the role's attributes")?;
    let (role, superuser, replication): (String, bool, bool) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    let mut missing: Vec<String> = Vec::new();
    if needs.replication && !superuser && !replication {
        missing.push(format!(
            "REPLICATION (logical decoding of the followed table): ALTER ROLE {role} REPLICATION"
        ));
    }
    // One round trip each for the schemas, the tables and the sequences.
    let names = schemas(needs);
    let rows = client
        .query(
            "SELECT n FROM unnest($1::text[]) WITH ORDINALITY AS s(n, i)
             WHERE to_regnamespace(n) IS NULL OR NOT has_schema_privilege(to_regnamespace(n), 'USAGE')
             ORDER BY i",
            &[&names],
        )
        .context("cannot read the role's schema privileges")?;
    for row in rows {
        let schema: &str = row.try_get(0)?;
        missing.push(format!(
            "USAGE on schema {schema}: GRANT USAGE ON SCHEMA {schema} TO {role}"
        ));
    }
    let (tables, privileges): (Vec<&str>, Vec<&str>) = needs.tables.iter().copied().unzip();
    let t = relation("t");
    let rows = client
        .query(
            &format!(
                "SELECT t, {t} IS NOT NULL,
                    ARRAY(SELECT p FROM unnest(string_to_array(ps, ', ')) WITH ORDINALITY AS q(p, j)
                          WHERE {t} IS NOT NULL
                            AND NOT has_table_privilege({t}, p) ORDER BY j)
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(t, ps, i) ORDER BY i"
            ),
            &[&tables, &privileges],
        )
        .context("cannot read the role's table privileges")?;
    for row in rows {
        let (table, exists, lacking): (&str, bool, Vec<String>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if !exists {
            missing.push(format!(
                "table {table} does not exist: run `dishflow setup --job {}` as its owner",
                needs.job
            ));
        }
        for privilege in lacking {
            missing.push(format!(
                "{privilege} on {table}: GRANT {privilege} ON {table} TO {role}"
            ));
        }
    }
    let s = relation("s");
    let rows = client
        .query(
            &format!(
                "SELECT s FROM unnest($1::text[]) WITH ORDINALITY AS u(s, i)
             WHERE {s} IS NOT NULL AND NOT has_sequence_privilege({s}, 'USAGE')
             ORDER BY i"
            ),
            &[&needs.sequences],
        )
        .context("cannot read the role's sequence privileges")?;
    for row in rows {
        let sequence: &str = row.try_get(0)?;
        missing.push(format!(
            "USAGE on sequence {sequence}: GRANT USAGE ON SEQUENCE {sequence} TO {role}"
        ));
    }
    if !missing.is_empty() {
        bail!(
            "role {role} lacks what the {} job needs: {} (`dishflow setup --print-roles` prints \
             every grant)",
            needs.job,
            missing.join("; ")
        );
    }
    Ok(())
}

/// A job's schema at startup: created or completed by `setup` when the connected role owns
/// it (see [`owns_schema`]), else left to its owner; then [`check`]ed either way.
pub fn prepare(url: &str, needs: &Needs, setup: impl FnOnce() -> Result<()>) -> Result<()> {
    let mut client = super::connect(url)?;
    if owns_schema(&mut client, needs)? {
        setup()?;
    }
    check(&mut client, needs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_roles_grant_exactly_each_jobs_needs() {
        let sql = roles_sql("df_");
        assert!(sql.contains("CREATE ROLE df_promos LOGIN"));
        assert!(sql.contains("ALTER ROLE df_promos REPLICATION;"));
        assert!(!sql.contains("ALTER ROLE df_dashboard REPLICATION"));
        assert!(sql.contains("GRANT USAGE ON SCHEMA public, mart TO df_promos;"));
        assert!(sql.contains("GRANT SELECT ON public.subscribers_restaurants TO df_promos;"));
        assert!(
            sql.contains(
                "GRANT SELECT, INSERT, UPDATE ON public.subscribers_feedback TO df_promos;"
            )
        );
        assert!(sql.contains("GRANT SELECT ON cdm.tag_rules TO df_orders;"));
        assert!(sql.contains("GRANT SELECT ON mart.geo_zones TO df_dashboard;"));
        assert!(!sql.contains("INSERT ON mart.geo_zones TO df_dashboard"));
        assert!(sql.contains("GRANT USAGE ON SEQUENCE public.dishflow_outbox_seq TO df_geo;"));
    }

    #[test]
    fn a_role_prefix_is_a_plain_identifier() {
        assert!(role_prefix("dishflow_").is_ok());
        assert!(role_prefix("_x9").is_ok());
        for bad in ["", "9x", "Dishflow", "x; DROP TABLE t; --", "x-y"] {
            assert!(role_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn schemas_are_those_of_the_tables_in_order() {
        assert_eq!(schemas(&PROMOS), ["public", "mart"]);
        assert_eq!(schemas(&ORDERS), ["cdm", "stg", "dds", "public"]);
        assert_eq!(schemas(&DASHBOARD), ["mart", "cdm", "geo"]);
    }
}
