//! Timely cluster configuration from our own flags.
//!
//! timely's `Config::from_args` rejects options it does not know (and its `-h` hostfile flag
//! clashes with `--help`), so the configuration is built here from [`ClusterArgs`]:
//!
//! | flags                                             | timely communication          |
//! |---------------------------------------------------|-------------------------------|
//! | `--workers 1`                                     | `Thread`                      |
//! | `--workers N`                                     | `Process(N)`                  |
//! | `--processes P --process I --hostfile F [-w N]`   | `Cluster { threads: N, .. }`  |
//!
//! A hostfile has one `host:port` per line, line `i` being process `i`; blank lines and lines
//! starting with `#` are ignored. Every process must be started with the same `--workers`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use timely::{CommunicationConfig, WorkerConfig};

use clap::Args;

/// Scale-out: worker threads per process, and processes in a cluster.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Worker threads in this process.
    #[arg(long, short = 'w', env = "DISHFLOW_WORKERS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,

    /// Number of processes in the cluster (all started with the same arguments but --process).
    #[arg(long, env = "DISHFLOW_PROCESSES", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub processes: u16,

    /// Index of this process in the cluster, 0-based.
    #[arg(long, env = "DISHFLOW_PROCESS", default_value_t = 0)]
    pub process: u16,

    /// File with one HOST:PORT per line, line i being process i (needed with --processes > 1).
    #[arg(long, env = "DISHFLOW_HOSTFILE")]
    pub hostfile: Option<std::path::PathBuf>,
}

impl ClusterArgs {
    /// Worker threads in the whole cluster.
    pub fn peers(&self) -> usize {
        usize::from(self.workers) * usize::from(self.processes)
    }

    /// Every process's address (the hostfile's lines), none for a single process.
    pub fn addresses(&self) -> Result<Vec<String>> {
        match (&self.hostfile, self.processes) {
            (Some(hostfile), 2..) => read_hostfile(hostfile),
            _ => Ok(Vec::new()),
        }
    }
}

/// Builds timely's configuration from the cluster flags.
pub fn timely_config(args: &ClusterArgs) -> Result<timely::Config> {
    let threads = usize::from(args.workers);
    let communication = if args.processes > 1 {
        let Some(hostfile) = &args.hostfile else {
            bail!("--processes {} needs --hostfile", args.processes)
        };
        let addresses = read_hostfile(hostfile)?;
        if addresses.len() != usize::from(args.processes) {
            bail!(
                "hostfile {} lists {} processes but --processes is {}",
                hostfile.display(),
                addresses.len(),
                args.processes
            );
        }
        if args.process >= args.processes {
            bail!(
                "--process {} is out of range for --processes {}",
                args.process,
                args.processes
            );
        }
        CommunicationConfig::Cluster {
            threads,
            process: usize::from(args.process),
            addresses,
            report: false,
            zerocopy: false,
        }
    } else if args.process != 0 {
        bail!("--process {} given without --processes", args.process)
    } else if threads > 1 {
        CommunicationConfig::Process(threads)
    } else {
        CommunicationConfig::Thread
    };
    Ok(timely::Config {
        communication,
        worker: WorkerConfig::default(),
    })
}

/// Reads a hostfile: one `host:port` per line.
pub fn read_hostfile(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read hostfile {}", path.display()))?;
    parse_hostfile(&text).with_context(|| format!("bad hostfile {}", path.display()))
}

fn parse_hostfile(text: &str) -> Result<Vec<String>> {
    let mut addresses = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                addresses.push(line.to_string())
            }
            _ => bail!("line {}: expected host:port, got `{line}`", n + 1),
        }
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(workers: u16, processes: u16, process: u16) -> ClusterArgs {
        ClusterArgs {
            workers,
            processes,
            process,
            hostfile: None,
        }
    }

    #[test]
    fn single_process_configs() {
        let c = timely_config(&args(1, 1, 0)).expect("config");
        assert!(matches!(c.communication, CommunicationConfig::Thread));
        let c = timely_config(&args(3, 1, 0)).expect("config");
        assert!(matches!(c.communication, CommunicationConfig::Process(3)));
    }

    #[test]
    fn cluster_needs_a_matching_hostfile() {
        assert!(timely_config(&args(1, 2, 0)).is_err());
        assert!(timely_config(&args(1, 1, 1)).is_err());
        let dir = std::env::temp_dir().join(format!("dishflow-hostfile-{}", std::process::id()));
        std::fs::write(&dir, "# cluster\n127.0.0.1:2101\n\n127.0.0.1:2102\n").expect("write");
        let mut a = args(2, 2, 1);
        a.hostfile = Some(dir.clone());
        match timely_config(&a).expect("config").communication {
            CommunicationConfig::Cluster {
                threads,
                process,
                addresses,
                ..
            } => {
                assert_eq!((threads, process), (2, 1));
                assert_eq!(addresses, vec!["127.0.0.1:2101", "127.0.0.1:2102"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        a.processes = 3;
        assert!(timely_config(&a).is_err());
        std::fs::remove_file(dir).ok();
    }

    #[test]
    fn hostfile_lines_must_be_host_port() {
        assert!(parse_hostfile("localhost").is_err());
        assert!(parse_hostfile("h:notaport").is_err());
    }
}
