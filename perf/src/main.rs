//! `amqp-perf`: a PerfTest-style load generator for AMQP 0-9-1 brokers, and a same-run comparison
//! of the bundled broker with RabbitMQ.
//!
//! It speaks raw AMQP through `lapin` (not the framework), or with `--client raw` through its own
//! AMQP code built for load generation (see `raw`), so it measures brokers:
//!
//! ```text
//! amqp-perf run --uri amqp://guest:guest@127.0.0.1:5672/%2f -x 1 -y 1 -s 16 -z 10
//! amqp-perf compare --rabbitmq-url amqp://guest:guest@127.0.0.1:5672/%2f
//! amqp-perf soak --broker 127.0.0.1:5673 --broker-pid PID --minutes 5
//! ```

mod clock;
mod compare;
mod consumer;
mod counters;
mod histogram;
mod options;
mod producer;
mod raw;
mod report;
mod run;
mod soak;

use clap::{Parser, Subcommand};

/// Load-test an AMQP 0-9-1 broker, or compare the bundled broker with RabbitMQ.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One load run against one broker: producers and consumers on one queue.
    Run(options::RunOptions),
    /// The issue's six scenarios against the bundled broker (started here) and RabbitMQ,
    /// alternating, with the ratio per scenario.
    Compare(compare::CompareOptions),
    /// Minutes of churn against a running broker (see `scripts/soak.sh`): connections cut and
    /// reopened, confirms to durable queues, a slow consumer; checks that no confirmed message
    /// is lost and reports the broker's memory and a probe connection's latency.
    Soak(soak::SoakOptions),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(options) => {
            let report = run::run(&options).await?;
            if options.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
        }
        Command::Compare(options) => compare::compare(&options).await?,
        Command::Soak(options) => soak::soak(&options).await?,
    }
    Ok(())
}
