//! The measured figures: each test records rows; they are printed as a
//! table when the test ends (also when it passes) and appended (one JSON object a line) to the
//! file named by `INTEROP_REPORT`, if set, so that a script can print one
//! table for a whole run (`benches/scripts/interop.sh`).

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One measured figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// What was measured, e.g. `failover (SIGKILL)`.
    pub what: String,
    /// Who: `keepalived`, `ours`, `ours/keepalived` …
    pub who: String,
    /// VRRP version and family, e.g. `v3/IPv4`.
    pub version: String,
    /// Advertisement interval in ms.
    pub interval_ms: u32,
    /// The figure (ms for times, a count for counts).
    pub value: f64,
    /// The RFC's or the goal's figure beside it, if there is one.
    pub reference: Option<f64>,
    /// Unit and remarks.
    pub note: String,
}

/// Rows of one test, printed when dropped.
#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// Records a row: kept for the table and appended to `INTEROP_REPORT`.
    pub fn record(&mut self, row: Row) {
        eprintln!(
            "interop: {} {} {} @{} ms: {:.3} (ref {}) {}",
            row.what,
            row.who,
            row.version,
            row.interval_ms,
            row.value,
            row.reference.map_or("-".to_owned(), |r| format!("{r:.3}")),
            row.note
        );
        if let Some(path) = std::env::var_os("INTEROP_REPORT") {
            let line = serde_json::to_string(&row).expect("row to JSON");
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{line}"));
        }
        self.rows.push(row);
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if !self.rows.is_empty() {
            // Straight to stderr, past the test harness's capture, so that
            // CI's log shows the figures of passing tests too.
            let _ = writeln!(std::io::stderr(), "{}", table(&self.rows));
        }
    }
}

/// The rows as a text table, in the order given.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "measurement",
        "who",
        "version",
        "interval ms",
        "measured",
        "RFC / goal",
        "note",
    ]
    .map(str::to_owned);
    let body: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.what.clone(),
                r.who.clone(),
                r.version.clone(),
                r.interval_ms.to_string(),
                format!("{:.3}", r.value),
                r.reference.map_or("-".to_owned(), |v| format!("{v:.3}")),
                r.note.clone(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for r in &body {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String; 7]| {
        let mut s = String::from("|");
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            // Numbers right-aligned, text left.
            if (3..=5).contains(&i) {
                s += &format!(" {c:>w$} |");
            } else {
                s += &format!(" {c:<w$} |");
            }
        }
        s
    };
    let mut out = line(&header) + "\n|";
    for w in widths {
        out += &format!("{}|", "-".repeat(w + 2));
    }
    out += "\n";
    for r in &body {
        out += &line(r);
        out += "\n";
    }
    out
}

/// Reads the rows a run appended to a report file.
pub fn read_rows(path: &Path) -> Vec<Row> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
