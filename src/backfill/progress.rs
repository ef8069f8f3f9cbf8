//! Backfill progress, shown three ways with the same figures (documents done and total, rate,
//! ETA): a progress bar per collection on a terminal (indicatif), otherwise one structured log
//! line every few seconds, and always the `cdc_backfill_documents_{done,expected}` gauges.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::metrics as m;

/// How often the log mode writes a line per collection.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(5);

const BAR_TEMPLATE: &str = "{prefix:>18} [{bar:30}] {pos:>9}/{len:9} {msg}";

/// How to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// Bars when stderr is a terminal, log lines otherwise.
    #[default]
    Auto,
    Bars,
    Log,
}

struct Track {
    bar: Option<ProgressBar>,
    done: u64,
    total: Option<u64>,
    /// Documents done when this run started on the collection (a resumed run starts above 0).
    base: u64,
    started: Instant,
    last_log: Instant,
}

impl Track {
    /// Documents per second in this run.
    fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        (self.done.saturating_sub(self.base)) as f64 / secs
    }

    fn eta(&self) -> Option<Duration> {
        let total = self.total?;
        let rate = self.rate();
        (rate > 0.0).then(|| Duration::from_secs_f64(total.saturating_sub(self.done) as f64 / rate))
    }

    fn message(&self) -> String {
        let eta = self
            .eta()
            .map(|d| format!("ETA {}s", d.as_secs()))
            .unwrap_or_else(|| "ETA -".into());
        format!("{:.0} docs/s {eta}", self.rate())
    }
}

/// The progress of one backfill run.
pub struct Progress {
    pipeline: String,
    multi: Option<MultiProgress>,
    tracks: BTreeMap<String, Track>,
}

impl Progress {
    pub fn new(pipeline: &str, mode: ProgressMode) -> Progress {
        let bars = match mode {
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Bars => true,
            ProgressMode::Log => false,
        };
        let multi = bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress {
            pipeline: pipeline.to_string(),
            multi,
            tracks: BTreeMap::new(),
        }
    }

    /// Start showing a collection, resumed at `done` documents.
    pub fn start(&mut self, collection: &str, done: u64, total: Option<u64>) {
        let bar = self.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new(total.unwrap_or(0)));
            if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(collection.to_string());
            bar.set_position(done);
            bar
        });
        let now = Instant::now();
        let track = Track {
            bar,
            done,
            total,
            base: done,
            started: now,
            last_log: now,
        };
        if self.multi.is_none() {
            tracing::info!(pipeline = %self.pipeline, collection, documents_done = done,
                documents_total = total, resumed = done > 0, "backfill collection started");
        }
        self.tracks.insert(collection.to_string(), track);
        self.gauges(collection);
        m::zero_backfill(&self.pipeline, collection);
    }

    /// Documents done so far (cumulative, including earlier runs).
    pub fn advance(&mut self, collection: &str, done: u64) {
        let pipeline = self.pipeline.clone();
        let bars = self.multi.is_some();
        let Some(t) = self.tracks.get_mut(collection) else {
            return;
        };
        t.done = done;
        if let Some(total) = t.total
            && done > total
        {
            // The estimate was low (documents inserted during the scan).
            t.total = Some(done);
        }
        if let Some(bar) = &t.bar {
            if let Some(total) = t.total {
                bar.set_length(total);
            }
            bar.set_position(done);
            bar.set_message(t.message());
        }
        if !bars && t.last_log.elapsed() >= LOG_INTERVAL {
            t.last_log = Instant::now();
            tracing::info!(pipeline = %pipeline, collection, documents_done = t.done,
                documents_total = t.total, docs_per_sec = t.rate().round() as u64,
                eta_secs = t.eta().map(|d| d.as_secs()), "backfill progress");
        }
        self.gauges(collection);
    }

    /// The collection is done (complete, missing or failed); `outcome` is shown beside it.
    pub fn finish(&mut self, collection: &str, outcome: &str) {
        let Some(t) = self.tracks.get(collection) else {
            return;
        };
        match &t.bar {
            Some(bar) => bar.finish_with_message(format!("{outcome} ({})", t.message())),
            None => tracing::info!(pipeline = %self.pipeline, collection,
                documents_done = t.done, documents_total = t.total,
                docs_per_sec = t.rate().round() as u64, outcome,
                "backfill collection finished"),
        }
        self.gauges(collection);
    }

    /// Stop drawing (before the summary is printed).
    pub fn clear(&self) {
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
    }

    fn gauges(&self, collection: &str) {
        let Some(t) = self.tracks.get(collection) else {
            return;
        };
        let labels = [
            (m::LABEL_PIPELINE, self.pipeline.clone()),
            (m::LABEL_COLLECTION, collection.to_string()),
        ];
        metrics::gauge!(m::BACKFILL_DOCUMENTS_DONE, &labels).set(t.done as f64);
        if let Some(total) = t.total {
            metrics::gauge!(m::BACKFILL_DOCUMENTS_EXPECTED, &labels).set(total as f64);
        }
    }
}
