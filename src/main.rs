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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Setup(args) => {
            let url = &args.postgres_url;
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
    let cli = Cli::parse();
    dishflow::logs::init(cli.log_format);
    if let Err(error) = run(cli) {
        // One line, also when a cause spans several (a Postgres error's DETAIL).
        let line = format!("{error:#}").replace('\n', " ");
        eprintln!("dishflow: error: {line}");
        std::process::exit(1);
    }
}
