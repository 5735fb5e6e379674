//! `sift filter test`: evaluates a filter against attributes with the real matching engine,
//! so users can debug filters and docs can show the semantics.
//!
//! Exit status: 0 match, 1 no match, 2 bad input (the filter error is shown with a caret under
//! the offending byte).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use sift_matcher_core::{Engine, EngineConfig, NewSubscription, Timestamp};
use sift_protocol::event::check_attr_name;
use sift_protocol::limits::Limits;
use sift_protocol::{Attributes, Filter, Pattern, SubscriptionId, Topic, Value};

use super::{err, out};

/// Filter subcommands.
#[derive(Subcommand, Debug)]
pub enum FilterCommand {
    /// Test a filter against an event's attributes: prints `match` (exit 0) or `no match`
    /// (exit 1); a bad filter or bad input exits 2.
    Test(TestArgs),
}

/// Arguments of `sift filter test`.
#[derive(Args, Debug)]
pub struct TestArgs {
    /// The filter expression, e.g. 'region == "eu" && price > 10'.
    pub filter: String,
    /// The event's attributes as a JSON object of strings, numbers and booleans.
    #[arg(long, default_value = "{}")]
    pub attrs: String,
    /// The event's topic (checked by the topic rules).
    #[arg(long)]
    pub topic: Option<String>,
    /// A topic pattern the subscription uses; needs --topic.
    #[arg(long, requires = "topic")]
    pub pattern: Option<String>,
}

/// Runs a filter subcommand.
pub fn run(command: FilterCommand) -> ExitCode {
    match command {
        FilterCommand::Test(args) => match test(&args) {
            Ok(true) => {
                out("match");
                ExitCode::SUCCESS
            }
            Ok(false) => {
                out("no match");
                ExitCode::from(1)
            }
            Err(message) => {
                err(&message);
                ExitCode::from(2)
            }
        },
    }
}

/// Parses the inputs and matches; `Err` holds the message for the user.
fn test(args: &TestArgs) -> Result<bool, String> {
    let filter = Filter::parse(&args.filter)
        .map_err(|e| format!("error: invalid filter {}", e.caret(&args.filter)))?;
    let attrs = parse_attrs(&args.attrs)?;
    let topic = match &args.topic {
        Some(t) => Topic::parse(t).map_err(|e| format!("error: invalid --topic: {e}"))?,
        None => Topic::parse("_").map_err(|e| e.to_string())?,
    };
    let pattern = match &args.pattern {
        Some(p) => Pattern::parse(p).map_err(|e| format!("error: invalid --pattern: {e}"))?,
        None => Pattern::from(topic.clone()),
    };
    let mut engine = Engine::new(EngineConfig::default());
    let now = Timestamp::from_millis(0);
    let sub = NewSubscription::new(SubscriptionId(1), pattern).filter(filter);
    engine
        .subscribe(now, sub)
        .map_err(|e| format!("error: {e}"))?;
    let mut matches = Vec::new();
    engine.match_event(now, &topic, &attrs, &mut matches);
    Ok(!matches.is_empty())
}

/// Parses `--attrs`: a JSON object whose values are strings, numbers or booleans. Integers
/// (no fraction, no exponent) become 64-bit integers, other numbers floats, as in filters.
pub fn parse_attrs(json: &str) -> Result<Attributes, String> {
    let parsed: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("error: --attrs is not valid JSON: {e}"))?;
    let serde_json::Value::Object(map) = parsed else {
        return Err("error: --attrs must be a JSON object, like '{\"region\": \"eu\"}'".into());
    };
    let limits = Limits::default();
    if map.len() > limits.attrs_max {
        return Err(format!(
            "error: {} attributes; the limit is {}",
            map.len(),
            limits.attrs_max
        ));
    }
    let mut attrs = Attributes::new();
    for (name, v) in map {
        check_attr_name(&name, limits.attr_name_bytes_max).map_err(|e| format!("error: {e}"))?;
        let value = match v {
            serde_json::Value::String(s) if s.len() > limits.attr_string_bytes_max => {
                let max = limits.attr_string_bytes_max;
                return Err(format!(
                    "error: attribute {name:?}: the string is {} bytes; the limit is {max}",
                    s.len()
                ));
            }
            serde_json::Value::String(s) => Value::Str(s),
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => number(&name, n.as_str())?,
            other => {
                return Err(format!(
                    "error: attribute {name:?}: {other} is not a string, number or boolean"
                ))
            }
        };
        attrs.insert(name, value);
    }
    Ok(attrs)
}

/// A JSON number as the filter language reads literals: without a fraction or an exponent it is
/// a 64-bit integer (refused if it does not fit), otherwise a finite 64-bit float.
fn number(name: &str, text: &str) -> Result<Value, String> {
    if text.contains(['.', 'e', 'E']) {
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => Err(format!(
                "error: attribute {name:?}: {text} is out of the 64-bit float range"
            )),
        }
    } else {
        text.parse::<i64>().map(Value::Int).map_err(|_| {
            format!("error: attribute {name:?}: {text} does not fit in 64 signed bits")
        })
    }
}
