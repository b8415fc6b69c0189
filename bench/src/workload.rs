//! Workloads of the load generator: what each operation mix is, how keys are chosen, and how
//! results are gathered and printed. Pure: no I/O but printing, so it is tested directly.

use hdrhistogram::Histogram;
use rand::Rng;
use rand_distr::{Distribution, Zipf};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The operations a workload mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Read one existing record.
    Read,
    /// Overwrite one existing record.
    Update,
    /// Write a new record.
    Insert,
    /// Read up to `scan_length_max` records in key order from an existing one.
    Scan,
    /// Read a record, then write it back (read-modify-write).
    ReadModifyWrite,
    /// Overwrite `txn_keys` existing records in one transaction (ringkv: a Percolator
    /// transaction; etcd: a `Txn` of puts).
    Txn,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::ReadModifyWrite => "read_modify_write",
            OpKind::Txn => "txn",
        }
    }
}

/// How keys of existing records are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum KeyDistribution {
    /// Every record equally likely.
    Uniform,
    /// A few records hot (Zipf, exponent 0.99, as YCSB).
    Zipfian,
    /// The most recently inserted records hot (Zipf over recency).
    Latest,
}

/// A named operation mix and its default key distribution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workload {
    pub name: String,
    /// (operation, weight); weights sum to 1.
    pub mix: Vec<(OpKind, f64)>,
    pub distribution: KeyDistribution,
    /// Records one `Txn` operation writes (0 in workloads without transactions).
    pub txn_keys: usize,
}

/// The workloads `ringkv-bench run --workload` knows.
pub const WORKLOAD_NAMES: &[&str] = &[
    "put", "get", "mixed", "ycsb-a", "ycsb-b", "ycsb-c", "ycsb-d", "ycsb-e", "ycsb-f", "txn-2",
    "txn-10",
];

impl Workload {
    /// The workload called `name` (see [`WORKLOAD_NAMES`]; YCSB's core workloads A–F with
    /// their published proportions).
    pub fn named(name: &str) -> Result<Workload, String> {
        use KeyDistribution::*;
        use OpKind::*;
        let (mix, distribution): (Vec<(OpKind, f64)>, _) = match name {
            "put" => (vec![(Insert, 1.0)], Uniform),
            "get" => (vec![(Read, 1.0)], Uniform),
            "mixed" => (vec![(Read, 0.5), (Update, 0.5)], Uniform),
            "ycsb-a" => (vec![(Read, 0.5), (Update, 0.5)], Zipfian),
            "ycsb-b" => (vec![(Read, 0.95), (Update, 0.05)], Zipfian),
            "ycsb-c" => (vec![(Read, 1.0)], Zipfian),
            "ycsb-d" => (vec![(Read, 0.95), (Insert, 0.05)], Latest),
            "ycsb-e" => (vec![(Scan, 0.95), (Insert, 0.05)], Zipfian),
            "ycsb-f" => (vec![(Read, 0.5), (ReadModifyWrite, 0.5)], Zipfian),
            "txn-2" | "txn-10" => (vec![(Txn, 1.0)], Uniform),
            other => {
                return Err(format!(
                    "unknown workload {other:?}; choose one of {}",
                    WORKLOAD_NAMES.join(", ")
                ))
            }
        };
        let txn_keys = match name {
            "txn-2" => 2,
            "txn-10" => 10,
            _ => 0,
        };
        Ok(Workload {
            name: name.to_string(),
            mix,
            distribution,
            txn_keys,
        })
    }

    /// Whether it reads records that must be loaded first.
    pub fn needs_records(&self) -> bool {
        self.mix.iter().any(|(op, _)| *op != OpKind::Insert)
    }

    /// Picks the next operation from a uniform draw in `[0, 1)`.
    pub fn pick(&self, draw: f64) -> OpKind {
        let mut acc = 0.0;
        for &(op, weight) in &self.mix {
            acc += weight;
            if draw < acc {
                return op;
            }
        }
        self.mix.last().expect("a workload has operations").0
    }
}

/// Validated options of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSpec {
    pub workload: Workload,
    pub records: u64,
    pub clients: usize,
    pub seconds: u64,
    pub value_bytes: usize,
    pub scan_length_max: usize,
    /// Stop after this many operations in all (or at `seconds`, whichever comes first).
    pub ops: Option<u64>,
}

impl RunSpec {
    /// Checks the options together; the error says which one is wrong and what is allowed.
    pub fn new(
        workload: &str,
        distribution: Option<KeyDistribution>,
        records: u64,
        clients: usize,
        seconds: u64,
        value_bytes: usize,
    ) -> Result<RunSpec, String> {
        let mut workload = Workload::named(workload)?;
        if let Some(d) = distribution {
            workload.distribution = d;
        }
        if workload.needs_records() && records == 0 {
            return Err(format!(
                "--records must be at least 1: workload {} reads records loaded first",
                workload.name
            ));
        }
        if clients == 0 || clients > 10_000 {
            return Err(format!("--clients {clients} is outside 1..=10000"));
        }
        if seconds == 0 || seconds > 86_400 {
            return Err(format!("--seconds {seconds} is outside 1..=86400"));
        }
        if value_bytes == 0 || value_bytes > 1 << 20 {
            return Err(format!(
                "--value-bytes {value_bytes} is outside 1..=1048576"
            ));
        }
        Ok(RunSpec {
            workload,
            records,
            clients,
            seconds,
            value_bytes,
            scan_length_max: 100,
            ops: None,
        })
    }

    /// Bounds the run by an operation count as well as its duration.
    pub fn with_ops(mut self, ops: Option<u64>) -> Result<RunSpec, String> {
        if let Some(n) = ops {
            if n == 0 || n > 1_000_000_000_000 {
                return Err(format!("--ops {n} is outside 1..=1000000000000"));
            }
        }
        self.ops = ops;
        Ok(self)
    }
}

/// The key of record `n` (fixed width, so key order is record order).
pub fn record_key(n: u64) -> Vec<u8> {
    format!("user{n:012}").into_bytes()
}

/// Picks records by a [`KeyDistribution`] among the `count` that exist.
pub struct KeyChooser {
    distribution: KeyDistribution,
    /// Zipf over a fixed range, rebuilt only when the record count has grown by a tenth (the
    /// generator's setup is O(1), but keeping one avoids it per operation).
    zipf: Option<(u64, Zipf<f64>)>,
}

impl KeyChooser {
    pub fn new(distribution: KeyDistribution) -> KeyChooser {
        KeyChooser {
            distribution,
            zipf: None,
        }
    }

    /// A record number in `0..count` (`count` >= 1).
    pub fn next(&mut self, rng: &mut impl Rng, count: u64) -> u64 {
        let count = count.max(1);
        match self.distribution {
            KeyDistribution::Uniform => rng.gen_range(0..count),
            KeyDistribution::Zipfian => {
                // Hot records are spread over the key space, not bunched at its start (YCSB
                // scrambles its Zipf the same way), so hot keys land in different regions.
                let rank = self.zipf_rank(rng, count);
                crate::spread(rank, 0) % count
            }
            KeyDistribution::Latest => count - 1 - self.zipf_rank(rng, count).min(count - 1),
        }
    }

    fn zipf_rank(&mut self, rng: &mut impl Rng, count: u64) -> u64 {
        let rebuild = match &self.zipf {
            Some((n, _)) => count > n + n / 10 || count < *n,
            None => true,
        };
        if rebuild {
            let zipf = Zipf::new(count, 0.99).expect("count >= 1 and exponent > 0");
            self.zipf = Some((count, zipf));
        }
        let (n, zipf) = self.zipf.as_ref().expect("built");
        (zipf.sample(rng) as u64).saturating_sub(1).min(n - 1) % count
    }
}

/// An empty latency histogram: 1 µs to 60 s, three significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Latencies and outcomes by operation.
#[derive(Default)]
pub struct Recorder {
    by_op: BTreeMap<OpKind, (Histogram<u64>, u64)>,
}

impl Recorder {
    /// Records a successful operation's latency (µs), or a failure.
    pub fn record(&mut self, op: OpKind, micros: Option<u64>) {
        let entry = self.slot(op);
        match micros {
            Some(us) => {
                let _ = entry.0.record(us.max(1));
            }
            None => entry.1 += 1,
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (op, (h, errors)) in &other.by_op {
            let entry = self.slot(*op);
            let _ = entry.0.add(h);
            entry.1 += errors;
        }
    }

    fn slot(&mut self, op: OpKind) -> &mut (Histogram<u64>, u64) {
        self.by_op
            .entry(op)
            .or_insert_with(|| (latency_histogram(), 0))
    }

    /// Operations so far (successful, all kinds).
    pub fn ops(&self) -> u64 {
        self.by_op.values().map(|(h, _)| h.len()).sum()
    }

    /// The report over `seconds` of load.
    pub fn report(&self, seconds: f64) -> Vec<OpReport> {
        self.by_op
            .iter()
            .map(|(op, (h, errors))| {
                let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                OpReport {
                    operation: op.name().to_string(),
                    ops: h.len(),
                    errors: *errors,
                    ops_per_second: h.len() as f64 / seconds.max(1e-9),
                    p50_ms: ms(0.5),
                    p90_ms: ms(0.9),
                    p99_ms: ms(0.99),
                    p999_ms: ms(0.999),
                    max_ms: h.max() as f64 / 1000.0,
                }
            })
            .collect()
    }
}

/// One operation type's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpReport {
    pub operation: String,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// The final table: one row per (target, operation).
pub fn format_table(rows: &[(String, Vec<OpReport>)]) -> String {
    let mut out = format!(
        "{:<10} {:<18} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7}\n",
        "target",
        "operation",
        "ops/s",
        "ops",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "errors",
        ""
    );
    for (target, reports) in rows {
        for r in reports {
            let _ = writeln!(
                out,
                "{:<10} {:<18} {:>10.0} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>9} {:>7}",
                target,
                r.operation,
                r.ops_per_second,
                r.ops,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                r.p999_ms,
                r.max_ms,
                r.errors,
                ""
            );
        }
    }
    out
}

/// The JSON document of a run: the options and, per target, the per-operation figures.
pub fn report_json(spec: &RunSpec, rows: &[(String, Vec<OpReport>)]) -> serde_json::Value {
    serde_json::json!({
        "spec": spec,
        "results": rows
            .iter()
            .map(|(target, ops)| serde_json::json!({"target": target, "operations": ops}))
            .collect::<Vec<_>>(),
    })
}

/// Draws throughput against client count, one line per target, as an SVG file.
/// A Markdown table of one saved `run --json` document: a heading naming the workload and
/// load, then one row per target and operation. For `scripts/benchmarks.sh`, which saves every
/// run and renders the tables of BENCHMARKS.md with `ringkv-bench report`.
pub fn markdown_report(doc: &serde_json::Value) -> Result<String, String> {
    let spec = doc
        .get("spec")
        .ok_or("not a `run --json` document: no \"spec\"")?;
    let results = doc
        .get("results")
        .and_then(|r| r.as_array())
        .ok_or("not a `run --json` document: no \"results\" list")?;
    let name = spec["workload"]["name"].as_str().unwrap_or("?");
    let mut out = format!(
        "#### {name}: {} clients, {} s, {} records, {} B values\n\n",
        spec["clients"], spec["seconds"], spec["records"], spec["value_bytes"]
    );
    out.push_str(
        "| target | operation | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for result in results {
        let target = result["target"].as_str().unwrap_or("?");
        for op in result["operations"].as_array().into_iter().flatten() {
            let ms = |k: &str| op[k].as_f64().map_or("-".into(), |v| format!("{v:.1}"));
            let _ = writeln!(
                out,
                "| {target} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                op["operation"].as_str().unwrap_or("?"),
                op["ops_per_second"].as_f64().unwrap_or(0.0),
                ms("p50_ms"),
                ms("p90_ms"),
                ms("p99_ms"),
                ms("p999_ms"),
                ms("max_ms"),
                op["errors"],
            );
        }
    }
    Ok(out)
}

pub fn plot_sweep(
    path: &std::path::Path,
    title: &str,
    series: &[(String, Vec<(usize, f64)>)],
) -> Result<(), String> {
    use plotters::prelude::*;
    let x_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(c, _)| *c))
        .max()
        .unwrap_or(1) as f64;
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..x_max.max(2.0)).log_scale(), 0f64..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients")
        .y_desc("operations per second")
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [RED, BLUE, GREEN, MAGENTA];
    for (i, (name, points)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let line: Vec<(f64, f64)> = points.iter().map(|(c, v)| (*c as f64, *v)).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(line.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ycsb_workloads_have_their_published_mixes() {
        for name in WORKLOAD_NAMES {
            let w = Workload::named(name).unwrap();
            let total: f64 = w.mix.iter().map(|(_, p)| p).sum();
            assert!((total - 1.0).abs() < 1e-9, "{name}: weights sum to {total}");
        }
        let a = Workload::named("ycsb-a").unwrap();
        assert_eq!(a.mix, vec![(OpKind::Read, 0.5), (OpKind::Update, 0.5)]);
        assert_eq!(a.distribution, KeyDistribution::Zipfian);
        let d = Workload::named("ycsb-d").unwrap();
        assert_eq!(d.distribution, KeyDistribution::Latest);
        let e = Workload::named("ycsb-e").unwrap();
        assert_eq!(e.pick(0.0), OpKind::Scan);
        assert_eq!(e.pick(0.99), OpKind::Insert);
        let f = Workload::named("ycsb-f").unwrap();
        assert_eq!(f.pick(0.75), OpKind::ReadModifyWrite);
        let t = Workload::named("txn-10").unwrap();
        assert_eq!((t.pick(0.5), t.txn_keys), (OpKind::Txn, 10));
        assert!(t.needs_records(), "transactions overwrite loaded records");
    }

    #[test]
    fn a_saved_run_renders_as_a_markdown_table() {
        let spec = RunSpec::new("mixed", None, 10, 4, 2, 100).unwrap();
        let mut rec = Recorder::default();
        rec.record(OpKind::Read, Some(1500));
        rec.record(OpKind::Update, None);
        let doc = report_json(&spec, &[("ringkv".into(), rec.report(2.0))]);
        let md = markdown_report(&doc).unwrap();
        assert!(md.starts_with("#### mixed: 4 clients, 2 s"), "{md}");
        assert!(md.contains("| ringkv | read | 0 | 1.5 |"), "{md}");
        assert!(md.contains("| ringkv | update |"), "{md}");
        assert!(markdown_report(&serde_json::json!({"x": 1})).is_err());
    }

    #[test]
    fn an_operation_count_bounds_the_run_and_zero_is_refused() {
        let spec = RunSpec::new("get", None, 10, 1, 1, 10).unwrap();
        assert_eq!(spec.clone().with_ops(Some(500)).unwrap().ops, Some(500));
        assert_eq!(spec.clone().with_ops(None).unwrap().ops, None);
        let err = spec.with_ops(Some(0)).unwrap_err();
        assert!(err.contains("--ops"), "{err}");
    }

    #[test]
    fn bad_options_are_refused_with_the_option_named() {
        let err = RunSpec::new("ycsb-z", None, 10, 1, 1, 10).unwrap_err();
        assert!(
            err.contains("unknown workload") && err.contains("ycsb-a"),
            "{err}"
        );
        let err = RunSpec::new("ycsb-a", None, 0, 1, 1, 10).unwrap_err();
        assert!(err.contains("--records"), "{err}");
        assert!(
            RunSpec::new("put", None, 0, 1, 1, 10).is_ok(),
            "put loads nothing"
        );
        let err = RunSpec::new("get", None, 10, 0, 1, 10).unwrap_err();
        assert!(err.contains("--clients"), "{err}");
        let err = RunSpec::new("get", None, 10, 1, 0, 10).unwrap_err();
        assert!(err.contains("--seconds"), "{err}");
        let err = RunSpec::new("get", None, 10, 1, 1, 0).unwrap_err();
        assert!(err.contains("--value-bytes"), "{err}");
        let spec = RunSpec::new("ycsb-c", Some(KeyDistribution::Uniform), 10, 1, 1, 10).unwrap();
        assert_eq!(spec.workload.distribution, KeyDistribution::Uniform);
    }

    #[test]
    fn key_choosers_stay_in_range_and_skew_as_named() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let count = 1000;
        for d in [
            KeyDistribution::Uniform,
            KeyDistribution::Zipfian,
            KeyDistribution::Latest,
        ] {
            let mut chooser = KeyChooser::new(d);
            let mut hits = vec![0u32; count as usize];
            for _ in 0..20_000 {
                let k = chooser.next(&mut rng, count);
                assert!(k < count, "{d:?} chose {k}");
                hits[k as usize] += 1;
            }
            let hottest = *hits.iter().max().unwrap();
            match d {
                // Uniform: about 20 each; nothing far above.
                KeyDistribution::Uniform => assert!(hottest < 60, "{hottest}"),
                KeyDistribution::Zipfian => assert!(hottest > 1000, "{hottest}"),
                KeyDistribution::Latest => {
                    assert!(hits[count as usize - 1] > 1000, "{:?}", &hits[990..])
                }
            }
        }
    }

    #[test]
    fn the_sweep_plot_is_an_svg_with_both_lines_labelled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.svg");
        let series = vec![
            (
                "ringkv".to_string(),
                vec![(1, 500.0), (8, 3000.0), (64, 8000.0)],
            ),
            (
                "etcd".to_string(),
                vec![(1, 400.0), (8, 2000.0), (64, 4000.0)],
            ),
        ];
        plot_sweep(&path, "ycsb-a", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..50.min(svg.len())]);
        for text in ["ringkv", "etcd", "concurrent clients", "ycsb-a"] {
            assert!(svg.contains(text), "{text} missing from the plot");
        }
    }

    #[test]
    fn the_report_has_a_row_per_operation_with_percentiles() {
        let mut r = Recorder::default();
        for us in 1..=1000 {
            r.record(OpKind::Read, Some(us));
        }
        r.record(OpKind::Update, Some(2000));
        r.record(OpKind::Update, None);
        let report = r.report(2.0);
        assert_eq!(report.len(), 2);
        let read = &report[0];
        assert_eq!((read.operation.as_str(), read.ops), ("read", 1000));
        assert!((read.ops_per_second - 500.0).abs() < 1e-9);
        assert!((read.p50_ms - 0.5).abs() < 0.01, "{}", read.p50_ms);
        assert!((read.p99_ms - 0.99).abs() < 0.01, "{}", read.p99_ms);
        assert_eq!((report[1].ops, report[1].errors), (1, 1));
        let rows = vec![("ringkv".to_string(), report)];
        let table = format_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        for column in [
            "operation",
            "ops/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9",
            "max ms",
            "errors",
        ] {
            assert!(lines[0].contains(column), "{column} missing: {}", lines[0]);
        }
        assert!(lines[1].starts_with("ringkv") && lines[1].contains("read"));
        let spec = RunSpec::new("mixed", None, 10, 1, 1, 10).unwrap();
        let json = report_json(&spec, &rows);
        assert_eq!(json["spec"]["workload"]["name"], "mixed");
        assert_eq!(json["results"][0]["target"], "ringkv");
        assert_eq!(json["results"][0]["operations"][1]["operation"], "update");
        assert!(json["results"][0]["operations"][0]["p999_ms"].is_number());
    }
}
