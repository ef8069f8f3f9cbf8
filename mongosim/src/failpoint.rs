//! Fault injection: `configureFailPoint` `failCommand` and `failGetMoreAfterCursorCheckout`
//! with the real server's semantics, plus one-shot faults queued from Rust (`Sim::fail_next`).
//!
//! Error labels follow the server: `failCommand` fires before a getMore checks out its
//! cursor, so the server cannot know it is a change stream and adds no
//! `ResumableChangeStreamError` (an `aggregate` carries its `$changeStream` pipeline, so it
//! does get the label); `failGetMoreAfterCursorCheckout` fires after, so a change-stream
//! getMore gets the label for the resumable codes. `RetryableWriteError` is added to
//! retryable writes for the retryable codes.

use std::time::Duration;

use bson::{Bson, Document};

use crate::state::{CmdError, RESUMABLE_CODES, RETRYABLE_WRITE_CODES, State};

/// A fault for the next matching command, queued with `Sim::fail_next`.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Close the connection without replying (before running the command).
    CloseConnection,
    /// Run the command, then close the connection instead of replying (lost reply).
    CloseAfterExecute,
    /// Reply with this error. `labels: None` applies the server's automatic labels.
    Error {
        code: i32,
        labels: Option<Vec<String>>,
    },
    /// Hold the command this long, then run it normally.
    Block(Duration),
}

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    AlwaysOn,
    Times(u64),
    Skip(u64),
}

/// The active `failCommand` fail point.
#[derive(Debug, Clone)]
pub struct FailPoint {
    pub mode: Mode,
    pub commands: Vec<String>,
    pub close_connection: bool,
    pub error_code: Option<i32>,
    pub error_labels: Option<Vec<String>>,
    pub block: Option<Duration>,
    pub app_name: Option<String>,
}

/// What to do to a command before running it.
#[derive(Debug, Default)]
pub struct Action {
    pub block: Option<Duration>,
    pub close: bool,
    pub close_after: bool,
    pub error: Option<CmdError>,
}

fn num(b: &Bson) -> Option<u64> {
    crate::order::as_f64(b).map(|f| f.max(0.0) as u64)
}

/// `configureFailPoint`.
pub fn configure(state: &mut State, cmd: &Document) -> Result<Document, CmdError> {
    let name = cmd.get_str("configureFailPoint").unwrap_or_default();
    let after_checkout = match name {
        "failCommand" => false,
        "failGetMoreAfterCursorCheckout" => true,
        _ => return Err(CmdError::bad_value(format!("Unknown fail point: {name}"))),
    };
    let slot = if after_checkout {
        &mut state.getmore_failpoint
    } else {
        &mut state.failpoint
    };
    let mode = match cmd.get("mode") {
        Some(Bson::String(s)) if s == "off" => {
            *slot = None;
            return Ok(bson::doc! {"count": 0});
        }
        Some(Bson::String(s)) if s == "alwaysOn" => Mode::AlwaysOn,
        Some(Bson::Document(d)) => {
            if let Some(n) = d.get("times").and_then(num) {
                Mode::Times(n)
            } else if let Some(n) = d.get("skip").and_then(num) {
                Mode::Skip(n)
            } else {
                return Err(CmdError::bad_value("mode must have 'times' or 'skip'"));
            }
        }
        _ => return Err(CmdError::bad_value("bad fail point mode")),
    };
    let data = cmd.get_document("data").cloned().unwrap_or_default();
    let commands: Vec<String> = if after_checkout {
        vec!["getMore".into()]
    } else {
        data.get_array("failCommands")
            .map_err(|_| CmdError::bad_value("failCommand requires 'failCommands'"))?
            .iter()
            .filter_map(|b| b.as_str().map(String::from))
            .collect()
    };
    let block = if data.get_bool("blockConnection").unwrap_or(false) {
        Some(Duration::from_millis(
            data.get("blockTimeMS")
                .and_then(num)
                .ok_or_else(|| CmdError::bad_value("blockConnection requires blockTimeMS"))?,
        ))
    } else {
        None
    };
    let fp = Some(FailPoint {
        mode,
        commands,
        close_connection: data.get_bool("closeConnection").unwrap_or(false),
        error_code: data.get("errorCode").and_then(num).map(|n| n as i32),
        error_labels: data.get_array("errorLabels").ok().map(|a| {
            a.iter()
                .filter_map(|b| b.as_str().map(String::from))
                .collect()
        }),
        block,
        app_name: data.get_str("appName").ok().map(String::from),
    });
    if after_checkout {
        state.getmore_failpoint = fp;
    } else {
        state.failpoint = fp;
    }
    Ok(bson::doc! {"count": 0})
}

/// The error a fault produces, with the server's automatic labels unless given.
pub fn error_for(
    code: i32,
    labels: Option<Vec<String>>,
    stream_getmore: bool,
    retryable_write: bool,
) -> CmdError {
    let mut e = CmdError::new(
        code,
        "Failing command via 'failCommand' failpoint".to_string(),
    );
    match labels {
        Some(l) => e.labels = l,
        None => {
            if stream_getmore && RESUMABLE_CODES.contains(&code) {
                e.labels.push("ResumableChangeStreamError".into());
            }
            if retryable_write && RETRYABLE_WRITE_CODES.contains(&code) {
                e.labels.push("RetryableWriteError".into());
            }
        }
    }
    e
}

/// Consume one firing of a fail point for a command; `None` when it does not fire.
fn fire(slot: &mut Option<FailPoint>, name: &str, app: Option<&str>) -> Option<FailPoint> {
    let fp = slot.as_mut()?;
    if !fp.commands.iter().any(|c| c == name) {
        return None;
    }
    if let Some(want) = &fp.app_name
        && app != Some(want.as_str())
    {
        return None;
    }
    match &mut fp.mode {
        Mode::AlwaysOn => {}
        Mode::Skip(n) if *n > 0 => {
            *n -= 1;
            return None;
        }
        Mode::Skip(_) => {}
        Mode::Times(n) => {
            if *n == 0 {
                *slot = None;
                return None;
            }
            *n -= 1;
        }
    }
    let fp = fp.clone();
    if matches!(fp.mode, Mode::Times(0)) {
        *slot = None;
    }
    Some(fp)
}

/// What a command's context means for the server's automatic labels.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// A getMore on a change-stream cursor.
    pub stream_getmore: bool,
    /// An aggregate whose pipeline starts with `$changeStream`.
    pub stream_aggregate: bool,
    /// A retryable write (or commit/abort).
    pub retryable_write: bool,
}

/// Decide the fault for a command (consuming `times`/`skip` and one-shot faults).
pub fn check(state: &mut State, name: &str, app: Option<&str>, ctx: Context) -> Option<Action> {
    if let Some(i) = state.faults.iter().position(|(c, _)| c == name) {
        let (_, f) = state.faults.remove(i);
        let mut a = Action::default();
        match f {
            Fault::CloseConnection => a.close = true,
            Fault::CloseAfterExecute => a.close_after = true,
            Fault::Block(d) => a.block = Some(d),
            Fault::Error { code, labels } => {
                // A fault from Rust models an error raised inside the command.
                let stream = ctx.stream_getmore || ctx.stream_aggregate;
                a.error = Some(error_for(code, labels, stream, ctx.retryable_write))
            }
        }
        return Some(a);
    }
    let fp = fire(&mut state.failpoint, name, app)?;
    Some(Action {
        block: fp.block,
        close: fp.close_connection,
        close_after: false,
        error: fp.error_code.map(|c| {
            error_for(
                c,
                fp.error_labels.clone(),
                ctx.stream_aggregate,
                ctx.retryable_write,
            )
        }),
    })
}

/// `failGetMoreAfterCursorCheckout` for a getMore whose cursor was found: the error, with
/// `ResumableChangeStreamError` for the resumable codes on a change-stream cursor.
pub fn check_after_checkout(
    state: &mut State,
    app: Option<&str>,
    stream: bool,
) -> Option<CmdError> {
    let fp = fire(&mut state.getmore_failpoint, "getMore", app)?;
    fp.error_code
        .map(|c| error_for(c, fp.error_labels.clone(), stream, false))
}
