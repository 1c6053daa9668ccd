//! The `dishflow` binary: parses the command line, runs the command, and turns any error
//! into one line on stderr and a non-zero exit status.

use std::io::Write;

use clap::Parser;
use dishflow::cli::{Cli, Command, SetupJob};
use dishflow::produce::ProduceCommand;

/// mimalloc instead of glibc malloc: differential's batches allocate and free many
/// short-lived vectors, where glibc spent most of the CPU time (scripts/bench.sh orders).
/// The `system-allocator` feature keeps glibc's, for heap profilers that hook malloc
/// (`heaptrack`; see docs/performance.md).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the crate names no constant for it).
#[cfg(not(feature = "system-allocator"))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc returns memory freed in bulk to the OS at once instead of a second later (its
/// default purge delay, 1000 ms): a job catching up frees each round's batches as the next
/// round allocates its own, and with the delay both were resident. 250k orders, caught up:
/// peak RSS 0.76–0.78 → 0.59–0.60 GB for ~0.6 s more system CPU (docs/performance.md).
/// `MIMALLOC_PURGE_DELAY` in the environment still decides, as mimalloc documents.
fn purge_freed_memory_promptly() {
    #[cfg(not(feature = "system-allocator"))]
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's process-wide options; any thread may call it.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Setup(args) => {
            let url = &args.postgres_url;
            if args.print_roles {
                print!("{}", dishflow::pg::roles::roles_sql(&args.role_prefix));
                return Ok(());
            }
            if args.drop {
                return dishflow::pg::drop_change_capture(url);
            }
            if args.cities.is_some() && !args.job.includes(SetupJob::Geo) {
                anyhow::bail!("--cities loads geo.cities: use it with --job geo (or all)");
            }
            if args.job.includes(SetupJob::Promos) {
                dishflow::pg::setup_promos(url)?;
            }
            if args.job.includes(SetupJob::Orders) {
                dishflow::pg::setup_orders(url)?;
            }
            if args.job.includes(SetupJob::Geo) {
                dishflow::pg::setup_geo(url, args.cities.map(|file| file.cities))?;
            }
            tracing::info!("schema ready");
            Ok(())
        }
        Command::Promos(args) => dishflow::jobs::promos::run(args),
        Command::Orders(args) => dishflow::jobs::orders::run(args),
        Command::Geo(args) => dishflow::jobs::geo::run(args),
        Command::Dashboard(args) => dishflow::dashboard::run(args),
        Command::Produce(ProduceCommand::Promos(args)) => dishflow::produce::promos(&args),
        Command::Produce(ProduceCommand::Orders(args)) => dishflow::produce::orders(&args),
        Command::Produce(ProduceCommand::Events(args)) => dishflow::produce::events(&args),
        Command::Redrive(args) => dishflow::redrive::run(args),
        Command::Consume(args) => {
            let messages = dishflow::kafka::consumer::read_to_end(
                &args.kafka,
                &args.topic,
                std::time::Duration::from_secs(args.timeout),
            )?;
            let mut out = std::io::stdout().lock();
            for message in messages {
                serde_json::to_writer(&mut out, &message)?;
                writeln!(out)?;
            }
            Ok(())
        }
    }
}

fn main() {
    purge_freed_memory_promptly();
    let cli = Cli::parse();
    dishflow::logs::init(cli.log_format);
    if let Err(error) = run(cli) {
        // One line, also when a cause spans several (a Postgres error's DETAIL).
        let line = format!("{error:#}").replace('\n', " ");
        eprintln!("dishflow: error: {line}");
        std::process::exit(1);
    }
}

#[cfg(all(test, not(feature = "system-allocator")))]
mod tests {
    use super::*;

    /// The constant is mimalloc's purge delay: its default (1000 ms in mimalloc 3) until
    /// the job sets it to 0.
    #[test]
    fn the_purge_delay_is_the_option_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads and sets mimalloc's process-wide options.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(get(), 1000);
        purge_freed_memory_promptly();
        assert_eq!(get(), 0);
    }
}
