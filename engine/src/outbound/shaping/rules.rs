//! Adaptive rules (`[[rule]]`): an SMTP reply that matches a pattern makes its (source, site)
//! path suspend, slow down, bounce its queue or retry later. Pure: matching only; the queue
//! manager and the shard act on the match.
use super::site::{Site, SiteMatch};
use crate::config::{RuleAction, RuleConfig};
use regex::Regex;
use std::time::Duration;

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name (or the regex).
    pub name: String,
    re: Regex,
    site: Option<SiteMatch>,
    /// What to do.
    pub action: RuleAction,
    /// For how long.
    pub duration: Duration,
    /// Throttle factor.
    pub factor: f64,
}

/// Every rule, in configuration order.
#[derive(Debug, Clone, Default)]
pub struct Rules(Vec<Rule>);

impl Rules {
    /// Compile validated rules.
    pub fn new(cfg: &[RuleConfig]) -> Self {
        Rules(
            cfg.iter()
                .filter_map(|r| {
                    Some(Rule {
                        name: r.name.clone().unwrap_or_else(|| r.regex.clone()),
                        re: Regex::new(&r.regex).ok()?,
                        site: r.site.as_deref().map(SiteMatch::parse),
                        action: r.action,
                        duration: Duration::from_secs_f64(r.duration_s.unwrap_or(0.0)),
                        factor: r.factor.unwrap_or(1.0),
                    })
                })
                .collect(),
        )
    }

    /// The first rule for this site whose pattern is found in `reply` (one line).
    pub fn first_match(&self, domain: &str, site: &Site, reply: &str) -> Option<&Rule> {
        if self.0.is_empty() {
            return None;
        }
        self.0.iter().find(|r| r.site.as_ref().is_none_or(|m| m.matches(domain, site)) && r.re.is_match(reply))
    }

    /// No rules at all (the hot path skips matching).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(regex: &str, site: Option<&str>, action: RuleAction) -> RuleConfig {
        RuleConfig { name: None, regex: regex.into(), site: site.map(Into::into), action, duration_s: Some(60.0), factor: Some(0.5) }
    }

    #[test]
    fn first_matching_rule_for_the_site_wins() {
        let rules = Rules::new(&[
            rule(r"\[TSS04\]", Some("*.yahoodns.net"), RuleAction::Suspend),
            rule(r"^4\d\d .*S3150", None, RuleAction::Throttle),
            rule(r"4\.7\.\d", None, RuleAction::RetryIn),
        ]);
        let yahoo = Site::of_mx("yahoo.com", ["mta5.am0.yahoodns.net".into()]);
        let other = Site::of_mx("x.test", ["mx.x.test".into()]);
        let tss = "421 4.7.0 [TSS04] Messages from 1.2.3.4 temporarily deferred";
        assert_eq!(rules.first_match("yahoo.com", &yahoo, tss).unwrap().action, RuleAction::Suspend);
        assert_eq!(rules.first_match("x.test", &other, tss).unwrap().action, RuleAction::RetryIn, "the Yahoo rule is Yahoo's only");
        let ms = "451 4.7.650 The mail server [1.2.3.4] has been temporarily rate limited S3150";
        assert_eq!(rules.first_match("x.test", &other, ms).unwrap().action, RuleAction::Throttle);
        assert!(rules.first_match("x.test", &other, "250 2.0.0 ok").is_none());
    }
}
