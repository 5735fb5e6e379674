//! Strategy names, as written on the command line and in configs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which way an anti-entropy exchange moves updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AeMode {
    /// The initiator sends what the partner lacks (offer → request → deltas).
    Push,
    /// The initiator asks for what it lacks (digest → deltas).
    Pull,
    /// Both: digest → deltas and the partner's digest → deltas.
    PushPull,
}

impl AeMode {
    fn name(self) -> &'static str {
        match self {
            AeMode::Push => "push",
            AeMode::Pull => "pull",
            AeMode::PushPull => "push-pull",
        }
    }
}

/// When a rumor monger loses interest in an update after an unnecessary contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Loss {
    /// After `k` unnecessary contacts (a counter per update).
    Counter,
    /// With probability `1/k` after each unnecessary contact.
    Coin,
}

/// The part of a strategy that pushes new updates as they arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Push {
    /// Forward every new update to every neighbour at once.
    Flood,
    /// Blind counter rumor mongering: each tick send a hot update to `b` random neighbours not
    /// known to have it, for at most `f` ticks.
    Bcrm {
        /// Neighbours per tick.
        b: u32,
        /// Ticks an update stays hot.
        f: u32,
    },
    /// Rumor mongering (Demers et al. 1987): each tick a node with hot updates pushes them all
    /// to one random neighbour, and loses interest after unnecessary contacts.
    Rumor {
        /// The counter limit, or the coin's `1/k`.
        k: u32,
        /// With feedback a contact is unnecessary when the partner already knew the update
        /// (judged against the partner's state before the current instant); blind, every
        /// contact counts.
        feedback: bool,
        /// Counter or coin.
        loss: Loss,
    },
}

/// A dissemination strategy: a push part, an anti-entropy part, or both.
///
/// Names: `flood`, `bcrm:B,F`, `rumor:k` (feedback + counter), `rumor-coin:k` (feedback +
/// coin), `rumor-blind:k` (blind + counter), `rumor-blind-coin:k` (blind + coin),
/// `anti-entropy:push|pull|push-pull` (`anti-entropy` alone is push-pull), and any push part
/// joined with an anti-entropy part by `+`, e.g. `rumor:2+anti-entropy:push-pull`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Strategy {
    /// Pushing new updates, if any.
    pub push: Option<Push>,
    /// Periodic digest exchange, if any.
    pub anti_entropy: Option<AeMode>,
}

impl Strategy {
    /// Flooding alone.
    pub const FLOOD: Strategy = Strategy {
        push: Some(Push::Flood),
        anti_entropy: None,
    };

    /// Rumor mongering with feedback and a counter of `k`, plus push-pull anti-entropy: the
    /// usual deployment (fast spread, anti-entropy repairs what the rumor missed).
    pub const fn rumor_anti_entropy(k: u32) -> Strategy {
        Strategy {
            push: Some(Push::Rumor {
                k,
                feedback: true,
                loss: Loss::Counter,
            }),
            anti_entropy: Some(AeMode::PushPull),
        }
    }
}

/// A strategy name that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid strategy {name:?}: {reason} (expected flood, bcrm:B,F, rumor:k, rumor-coin:k, rumor-blind:k, rumor-blind-coin:k, anti-entropy:push|pull|push-pull, or push+anti-entropy)")]
pub struct StrategyError {
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn number(text: &str, name: &str) -> Result<u32, StrategyError> {
    let err = |reason| StrategyError {
        name: name.to_owned(),
        reason,
    };
    let n: u32 = text
        .trim()
        .parse()
        .map_err(|_| err("a parameter is not a number"))?;
    if n == 0 || n > 1_000 {
        return Err(err("parameters must be between 1 and 1000"));
    }
    Ok(n)
}

fn parse_push(part: &str, name: &str) -> Result<Push, StrategyError> {
    let err = |reason| StrategyError {
        name: name.to_owned(),
        reason,
    };
    if part == "flood" {
        return Ok(Push::Flood);
    }
    let (head, arg) = part.split_once(':').ok_or_else(|| {
        if matches!(
            part,
            "bcrm" | "rumor" | "rumor-coin" | "rumor-blind" | "rumor-blind-coin"
        ) {
            err("missing parameter")
        } else {
            err("unknown strategy")
        }
    })?;
    let rumor = |feedback, loss| -> Result<Push, StrategyError> {
        Ok(Push::Rumor {
            k: number(arg, name)?,
            feedback,
            loss,
        })
    };
    match head {
        "bcrm" => {
            let (b, f) = arg.split_once(',').ok_or_else(|| err("bcrm takes B,F"))?;
            Ok(Push::Bcrm {
                b: number(b, name)?,
                f: number(f, name)?,
            })
        }
        "rumor" => rumor(true, Loss::Counter),
        "rumor-coin" => rumor(true, Loss::Coin),
        "rumor-blind" => rumor(false, Loss::Counter),
        "rumor-blind-coin" => rumor(false, Loss::Coin),
        _ => Err(err("unknown strategy")),
    }
}

fn parse_ae(part: &str, name: &str) -> Result<AeMode, StrategyError> {
    match part {
        "anti-entropy" | "anti-entropy:push-pull" => Ok(AeMode::PushPull),
        "anti-entropy:push" => Ok(AeMode::Push),
        "anti-entropy:pull" => Ok(AeMode::Pull),
        _ => Err(StrategyError {
            name: name.to_owned(),
            reason: "unknown anti-entropy mode",
        }),
    }
}

impl FromStr for Strategy {
    type Err = StrategyError;

    fn from_str(name: &str) -> Result<Strategy, StrategyError> {
        let name = name.trim();
        let mut strategy = Strategy {
            push: None,
            anti_entropy: None,
        };
        for part in name.split('+') {
            let part = part.trim();
            if part.starts_with("anti-entropy") {
                if strategy.anti_entropy.is_some() {
                    return Err(StrategyError {
                        name: name.to_owned(),
                        reason: "anti-entropy twice",
                    });
                }
                strategy.anti_entropy = Some(parse_ae(part, name)?);
            } else {
                if strategy.push.is_some() {
                    return Err(StrategyError {
                        name: name.to_owned(),
                        reason: "two push strategies",
                    });
                }
                strategy.push = Some(parse_push(part, name)?);
            }
        }
        Ok(strategy)
    }
}

impl fmt::Display for Push {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Push::Flood => f.write_str("flood"),
            Push::Bcrm { b, f: times } => write!(f, "bcrm:{b},{times}"),
            Push::Rumor { k, feedback, loss } => {
                let variant = match (feedback, loss) {
                    (true, Loss::Counter) => "rumor",
                    (true, Loss::Coin) => "rumor-coin",
                    (false, Loss::Counter) => "rumor-blind",
                    (false, Loss::Coin) => "rumor-blind-coin",
                };
                write!(f, "{variant}:{k}")
            }
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.push, self.anti_entropy) {
            (Some(push), Some(ae)) => write!(f, "{push}+anti-entropy:{}", ae.name()),
            (Some(push), None) => write!(f, "{push}"),
            (None, Some(ae)) => write!(f, "anti-entropy:{}", ae.name()),
            (None, None) => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "flood",
            "bcrm:2,2",
            "rumor:1",
            "rumor-coin:3",
            "rumor-blind:2",
            "rumor-blind-coin:2",
            "anti-entropy:push",
            "anti-entropy:pull",
            "anti-entropy:push-pull",
            "rumor:2+anti-entropy:push-pull",
            "flood+anti-entropy:pull",
        ] {
            let s: Strategy = name.parse().expect(name);
            assert_eq!(s.to_string(), name);
        }
        let s: Strategy = "rumor:2+anti-entropy".parse().expect("short form");
        assert_eq!(s, Strategy::rumor_anti_entropy(2));
    }

    #[test]
    fn bad_names_are_typed_errors() {
        for name in [
            "",
            "gossip",
            "bcrm:2",
            "rumor:x",
            "rumor:0",
            "anti-entropy:both",
            "flood+rumor:1",
            "flood:1",
        ] {
            assert!(name.parse::<Strategy>().is_err(), "{name}");
        }
    }
}
