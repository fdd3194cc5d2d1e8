//! Bounce classification: the category of a failed delivery, from its reply.
//!
//! Senders act on categories, not on free-text replies: a `bad-mailbox` is suppressed, a
//! `quota` retried later, `spam-related` is a reputation alarm. The rules come from a TOML file
//! (`config/bounce-rules.toml`, embedded; `[delivery] bounce_rules` replaces it): first match
//! wins, then the enhanced status code's class (RFC 3463), then `other`. Pure: no I/O after
//! the rules are parsed.
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

/// The rules shipped with ringpost.
pub const DEFAULT_RULES: &str = include_str!("../../../config/bounce-rules.toml");

/// What kind of failure a delivery met (PowerMTA's bounce categories are the reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BounceCategory {
    /// The mailbox does not exist.
    BadMailbox,
    /// The mailbox exists but is disabled or inactive.
    InactiveMailbox,
    /// The mailbox is full.
    Quota,
    /// The domain does not exist or takes no mail.
    BadDomain,
    /// No server answered (connect refused, timeout).
    NoAnswerFromHost,
    /// No route to the destination (DNS failure, routing loop).
    Routing,
    /// The server refused to relay.
    RelayDenied,
    /// Refused as spam or for the sender's reputation.
    SpamRelated,
    /// Refused by policy (authentication, rate limits).
    PolicyRelated,
    /// Retried until `max_age` without success.
    MessageExpired,
    /// The content was refused (size, virus, format).
    ContentRelated,
    /// The SMTP dialogue went wrong.
    ProtocolErrors,
    /// None of the above.
    Other,
}

impl BounceCategory {
    /// The category's name as written in logs and DSNs.
    pub fn as_str(self) -> &'static str {
        use BounceCategory::*;
        match self {
            BadMailbox => "bad-mailbox",
            InactiveMailbox => "inactive-mailbox",
            Quota => "quota",
            BadDomain => "bad-domain",
            NoAnswerFromHost => "no-answer-from-host",
            Routing => "routing",
            RelayDenied => "relay-denied",
            SpamRelated => "spam-related",
            PolicyRelated => "policy-related",
            MessageExpired => "message-expired",
            ContentRelated => "content-related",
            ProtocolErrors => "protocol-errors",
            Other => "other",
        }
    }
}

/// A rules file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// Not valid TOML or an unknown category or key.
    #[error("bounce rules: {0}")]
    Parse(#[from] toml::de::Error),
    /// A pattern that is not a valid regex.
    #[error("bounce rule {index}: bad pattern: {source}")]
    Pattern {
        /// Position of the rule (from 1).
        index: usize,
        /// The regex error.
        source: regex::Error,
    },
    /// The rules file could not be read.
    #[error("bounce rules {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A rule with neither a status nor a pattern would match everything.
    #[error("bounce rule {0}: needs a status or a pattern")]
    Empty(usize),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    category: BounceCategory,
    #[serde(default)]
    status: Vec<String>,
    pattern: Option<String>,
}

struct Rule {
    category: BounceCategory,
    status: Vec<String>,
    pattern: Option<Regex>,
}

/// Parsed rules.
pub struct Classifier {
    rules: Vec<Rule>,
}

impl Classifier {
    /// Parse a rules file (see `config/bounce-rules.toml` for the format).
    pub fn parse(text: &str) -> Result<Self, RulesError> {
        let file: RulesFile = toml::from_str(text)?;
        let rules = file.rule.into_iter().enumerate().map(|(i, r)| compile(i + 1, r)).collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// The shipped rules.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_RULES).expect("the shipped bounce rules parse")
    }

    /// The rules of `path`, or the shipped ones when there is none.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, RulesError> {
        match path {
            None => Ok(Self::builtin()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| RulesError::Read { path: p.to_path_buf(), source })?;
                Self::parse(&text)
            }
        }
    }

    /// The category of a failure whose reply had enhanced status `status` (e.g. `5.1.1`, empty
    /// when none) and text `text`.
    pub fn classify(&self, status: &str, text: &str) -> BounceCategory {
        self.rules
            .iter()
            .find(|r| {
                (r.status.is_empty() || r.status.iter().any(|s| status_matches(status, s))) && r.pattern.as_ref().is_none_or(|p| p.is_match(text))
            })
            .map(|r| r.category)
            .unwrap_or_else(|| by_status_class(status))
    }
}

fn compile(index: usize, r: RuleSpec) -> Result<Rule, RulesError> {
    if r.status.is_empty() && r.pattern.is_none() {
        return Err(RulesError::Empty(index));
    }
    let pattern = match r.pattern {
        Some(p) => Some(RegexBuilder::new(&p).case_insensitive(true).build().map_err(|source| RulesError::Pattern { index, source })?),
        None => None,
    };
    Ok(Rule { category: r.category, status: r.status, pattern })
}

/// `5.1.1` matches `5.1.1` and `5.1`, not `5.1.10` against `5.1.1`.
fn status_matches(status: &str, want: &str) -> bool {
    status == want || status.strip_prefix(want).is_some_and(|rest| rest.starts_with('.'))
}

/// RFC 3463's subjects and the common details, when no rule matched.
fn by_status_class(status: &str) -> BounceCategory {
    use BounceCategory::*;
    let mut parts = status.split('.').map(|p| p.parse::<u16>().ok());
    let (Some(Some(_class)), Some(Some(subject)), Some(Some(detail))) = (parts.next(), parts.next(), parts.next()) else {
        return Other;
    };
    match (subject, detail) {
        (1, 2) | (1, 10) => BadDomain,
        (1, 7) | (1, 8) => PolicyRelated,
        (1, _) => BadMailbox,
        (2, 1) => InactiveMailbox,
        (2, 2) => Quota,
        (2, 3) | (3, 4) => ContentRelated,
        (4, 1) | (4, 2) => NoAnswerFromHost,
        (4, _) => Routing,
        (5, _) => ProtocolErrors,
        (6, _) => ContentRelated,
        (7, _) => PolicyRelated,
        _ => Other,
    }
}

#[cfg(test)]
#[path = "bounce_class_tests.rs"]
mod tests;
