//! `status` as one screen of text.

use super::*;

pub(super) fn counts(m: &BTreeMap<String, i64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn when(t: &DateTime<Utc>, now: &DateTime<Utc>) -> String {
    format!(
        "{} ({} ago)",
        t.format("%Y-%m-%d %H:%M:%SZ"),
        human_duration((*now - *t).num_seconds())
    )
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = &self.checked_at;
        writeln!(
            f,
            "pipeline {} (database {}, vhost {})",
            self.pipeline, self.database, self.vhost
        )?;
        match &self.capture_leader {
            Some(l) => {
                let who = [
                    l.application_name.clone(),
                    l.client_hostname.clone(),
                    l.client_addr.clone(),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
                write!(f, "capture leader     backend pid {}", l.pid)?;
                if !who.is_empty() {
                    write!(f, " ({who})")?;
                }
                if let Some(t) = &l.session_started_at {
                    write!(f, ", session since {}", when(t, now))?;
                }
                writeln!(f)?;
            }
            None => writeln!(
                f,
                "capture leader     none (no session holds the capture lock)"
            )?,
        }
        match &self.checkpoint {
            Some(c) => {
                write!(f, "checkpoint         written {}", when(&c.updated_at, now))?;
                if let (Some(ct), Some(age)) = (&c.cluster_time, c.cluster_time_age_secs) {
                    write!(
                        f,
                        "; last event cluster time {ct} ({} ago)",
                        human_duration(age)
                    )?;
                }
                writeln!(f)?;
            }
            None => writeln!(f, "checkpoint         none")?,
        }
        for (label, q) in [
            ("projector queue", &self.queue),
            ("dead letters", &self.dead_letter_queue),
        ] {
            match (q.messages, q.consumers) {
                (Some(m), Some(c)) => writeln!(
                    f,
                    "{label:<18} {}: {m} message(s) ready, {c} consumer(s)",
                    q.name
                )?,
                _ => writeln!(f, "{label:<18} {}: not declared yet", q.name)?,
            }
        }
        if self.quarantined.is_empty() {
            writeln!(f, "quarantine         none")?;
        } else {
            writeln!(f, "quarantine         {}", counts(&self.quarantined))?;
        }
        match &self.backfill {
            None => writeln!(f, "last backfill      none")?,
            Some(b) => {
                write!(
                    f,
                    "last backfill      from {} {}, started {}",
                    b.source,
                    b.source_name,
                    when(&b.started_at, now)
                )?;
                match &b.finished_at {
                    Some(t) => writeln!(f, ", finished {}", when(t, now))?,
                    None => writeln!(f, ", not finished")?,
                }
                for c in &b.collections {
                    let total = c.total.map(|t| t.to_string()).unwrap_or_else(|| "?".into());
                    writeln!(
                        f,
                        "  {:<20} {:<9} {:>19}  {}",
                        c.collection,
                        c.status,
                        format!("{}/{}", c.done, total),
                        when(c.finished_at.as_ref().unwrap_or(&c.updated_at), now)
                    )?;
                }
            }
        }
        if self.deferred_ddl.is_empty() {
            writeln!(f, "deferred DDL       none")?;
        } else {
            writeln!(f, "deferred DDL       {} pending", self.deferred_ddl.len())?;
            for d in &self.deferred_ddl {
                writeln!(f, "  {} {} on {}", d.kind, d.name, d.table)?;
            }
        }
        write!(
            f,
            "migrations         {} of {} applied",
            self.migrations.embedded - self.migrations.pending.len(),
            self.migrations.embedded
        )?;
        match &self.migrations.latest {
            Some(l) => writeln!(f, " (latest {l})")?,
            None => writeln!(f)?,
        }
        match (
            self.rules.state,
            self.rules.recorded,
            &self.rules.recorded_at,
        ) {
            (_, Some(v), Some(at)) => writeln!(
                f,
                "projection rules   version {v} recorded {} (this binary: {}{})",
                when(at, now),
                self.rules.current,
                if v < self.rules.current {
                    ", OUTDATED"
                } else {
                    ", current"
                }
            )?,
            ("empty", ..) => writeln!(
                f,
                "projection rules   no star rows derived yet (this binary: {})",
                self.rules.current
            )?,
            _ => writeln!(
                f,
                "projection rules   not recorded: rows derived before the rules were tracked \
                 (this binary: {})",
                self.rules.current
            )?,
        }
        if self.problems.is_empty() {
            writeln!(f, "healthy")
        } else {
            writeln!(f, "NEEDS AN OPERATOR:")?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
            Ok(())
        }
    }
}
