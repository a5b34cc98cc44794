//! The comparison as tables: one row per figure with the ratio and the target, then the
//! CPU use that shows which process was the bottleneck.

use std::fmt::Write as _;

use super::scenarios::{Goal, Scenario};
use super::{Comparison, Cpu, Row};

/// Pairs each of a scenario's figures with its target, and adds the broker's CPU time per message
/// where the scenario streams messages: on a machine whose cores are shared, rates follow the CPU
/// a broker is given, its cost per message does not.
pub fn rows(
    scenario: Scenario,
    (bundled, bundled_cpu): (&[f64], Cpu),
    (rabbitmq, rabbitmq_cpu): (&[f64], Cpu),
) -> Vec<Row> {
    let mut rows = figures(scenario, bundled, rabbitmq);
    if let Some(consumed) = rows.iter().find(|r| r.metric == "consumed msg/s") {
        let micros = |cpu: Cpu, rate: f64| cpu.broker_pct / 100.0 / rate * 1e6;
        let b = micros(bundled_cpu, consumed.bundled);
        let r = micros(rabbitmq_cpu, consumed.rabbitmq);
        rows.push(Row {
            metric: "broker CPU µs/msg",
            bundled: b,
            rabbitmq: r,
            ratio: b / r,
            target: None,
            met: None,
        });
    }
    rows
}

fn figures(scenario: Scenario, bundled: &[f64], rabbitmq: &[f64]) -> Vec<Row> {
    scenario
        .metrics()
        .into_iter()
        .enumerate()
        .map(|(i, metric)| {
            let b = bundled.get(i).copied().unwrap_or(f64::NAN);
            let r = rabbitmq.get(i).copied().unwrap_or(f64::NAN);
            let ratio = b / r;
            let (target, met) = match metric.goal {
                Goal::AtLeastTimes(times) => {
                    (Some(format!("≥ {times}× RabbitMQ")), Some(ratio >= times))
                }
                Goal::AtMost(limit) => (Some(format!("≤ {limit}")), Some(b <= limit)),
                Goal::BelowRabbitMq => (Some("< RabbitMQ".to_owned()), Some(b < r)),
                Goal::Higher | Goal::Lower => (None, None),
            };
            Row {
                metric: metric.name,
                bundled: b,
                rabbitmq: r,
                ratio,
                target,
                met,
            }
        })
        .collect()
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "-".to_owned()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The human form.
pub fn render(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nbundled broker vs RabbitMQ, {} — {} CPUs, {} MiB, load average {:.2} before, {:.2} after, \
         {} client\n",
        c.date, c.nproc, c.memory_mib, c.load_average.0, c.load_average.1, c.client
    );
    let _ = writeln!(
        out,
        "{:<3} {:<21} {:>11} {:>11} {:>8}  target",
        "#", "figure", "bundled", "RabbitMQ", "ratio"
    );
    for s in &c.scenarios {
        let _ = writeln!(out, "{:<3} {}", s.id, s.title);
        for row in &s.rows {
            let verdict = match (&row.target, row.met) {
                (Some(t), Some(true)) => format!("{t}: met"),
                (Some(t), Some(false)) => format!("{t}: MISSED"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "{:<3} {:<21} {:>11} {:>11} {:>8}  {}",
                "",
                row.metric,
                number(row.bundled),
                number(row.rabbitmq),
                number(row.ratio),
                verdict
            );
        }
    }
    let _ = writeln!(
        out,
        "\nCPU during each run, % of one core (the load tool shares the machine):"
    );
    let _ = writeln!(
        out,
        "{:<3} {:>14} {:>14} {:>14} {:>14}",
        "#", "bundled", "tool (bundled)", "RabbitMQ", "tool (Rabbit)"
    );
    for s in &c.scenarios {
        let _ = writeln!(
            out,
            "{:<3} {:>14} {:>14} {:>14} {:>14}",
            s.id,
            number(s.bundled_cpu.broker_pct),
            number(s.bundled_cpu.tool_pct),
            number(s.rabbitmq_cpu.broker_pct),
            number(s.rabbitmq_cpu.tool_pct)
        );
    }
    let _ = writeln!(out, "\nmemory: {}", c.memory_method);
    out
}
