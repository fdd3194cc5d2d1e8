//! Configuration reload (`ringctl reload`, SIGHUP): read the file again, validate it, apply
//! what can change live on every core, and name what needs a restart (left as it was).
//!
//! A configuration that does not validate, or whose TLS files cannot be loaded, changes
//! nothing: core 0 checks the new settings before any core applies them.
use super::Admin;
use crate::config::Config;
use crate::shard::admin_ops::{CoreAnswer, CoreOp};
use ringpost_admin_proto::{ErrorKind, ReloadReport, Reply};
use std::fmt::Debug;
use std::sync::Arc;

/// What a reload will do: the configuration to apply (restart-only settings kept from the
/// running one), the settings applied live, those that need a restart.
#[derive(Debug)]
pub struct Plan {
    /// The configuration cores will use.
    pub config: Config,
    /// Changed settings applied live.
    pub applied: Vec<String>,
    /// Changed settings left as they are until a restart.
    pub needs_restart: Vec<String>,
}

fn differs<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// Compare the running configuration with a new one.
pub fn plan(old: &Config, new: Config) -> Plan {
    let mut needs_restart = Vec::new();
    let mut keep = |name: &str, changed: bool| {
        if changed {
            needs_restart.push(name.to_string());
        }
    };
    keep("server.listen", old.server.listen != new.server.listen);
    keep("server.hostname", old.server.hostname != new.server.hostname);
    keep("spool", differs(&old.spool, &new.spool));
    keep("engine", differs(&old.engine, &new.engine));
    keep("log", differs(&old.log, &new.log));
    keep("dns", differs(&old.dns, &new.dns));
    let (mut a, mut b) = (old.admin.clone(), new.admin.clone());
    (a.history, a.history_max, b.history, b.history_max) = (String::new(), 0, String::new(), 0);
    keep("admin (socket, group, connections, core timeout)", differs(&a, &b));
    keep("metrics", differs(&old.metrics, &new.metrics));
    // Sources, pools, shapes, rules and warm-up are compiled once at start (host-wide path
    // limits and warm-up counters outlive a core's view of the config).
    keep("source", differs(&old.source, &new.source));
    keep("pool", differs(&old.pool, &new.pool));
    keep("shape (and delivery.shaping)", differs(&old.shape, &new.shape) || old.delivery.shaping != new.delivery.shaping);
    keep("rule", differs(&old.rule, &new.rule));
    keep("warmup", differs(&old.warmup, &new.warmup));
    keep("cluster", differs(&old.cluster, &new.cluster));
    let mut config = new;
    config.server.listen = old.server.listen.clone();
    config.server.hostname = old.server.hostname.clone();
    config.spool = old.spool.clone();
    config.engine = old.engine.clone();
    config.log = old.log.clone();
    config.dns = old.dns.clone();
    let (history, history_max) = (config.admin.history.clone(), config.admin.history_max);
    config.admin = old.admin.clone();
    (config.admin.history, config.admin.history_max) = (history, history_max);
    config.metrics = old.metrics.clone();
    config.source = old.source.clone();
    config.pool = old.pool.clone();
    config.shape = old.shape.clone();
    config.delivery.shaping = old.delivery.shaping.clone();
    config.rule = old.rule.clone();
    config.warmup = old.warmup.clone();
    config.cluster = old.cluster.clone();
    let mut applied = Vec::new();
    let mut apply = |name: &str, changed: bool| {
        if changed {
            applied.push(name.to_string());
        }
    };
    apply("server.relay_networks", old.server.relay_networks != config.server.relay_networks);
    let (mut a, mut b) = (old.server.clone(), config.server.clone());
    (a.relay_networks, b.relay_networks) = (Vec::new(), Vec::new());
    apply("server (limits and timeouts)", differs(&a, &b));
    apply("delivery", differs(&old.delivery, &config.delivery));
    apply("route", differs(&old.route, &config.route));
    apply("tls", differs(&old.tls, &config.tls));
    apply("auth", differs(&old.auth, &config.auth));
    apply("dkim", differs(&old.dkim, &config.dkim));
    apply("admin.history", old.admin.history != config.admin.history || old.admin.history_max != config.admin.history_max);
    Plan { config, applied, needs_restart }
}

/// One line for the log (SIGHUP has no client to answer).
pub fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Reload(r) => format!("reloaded {}: applied [{}]; needs a restart [{}]", r.path, r.applied.join(", "), r.needs_restart.join(", ")),
        Reply::Error(e) => format!("reload refused, nothing changed: {}", e.message),
        other => format!("{other:?}"),
    }
}

impl Admin {
    /// Reload the configuration file; the reply says what changed, or why nothing did.
    pub async fn reload(&self) -> Reply {
        let Some(path) = self.shared.config_path.clone() else {
            return Reply::error(ErrorKind::Refused, "started with the embedded configuration (no --config): nothing to reload");
        };
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => return Reply::error(ErrorKind::Refused, format!("{}: {e}", path.display())),
        };
        let plan = plan(&self.current.borrow(), new);
        let config = Arc::new(plan.config);
        match self.ask(0, CoreOp::Reload(config.clone(), false)).await {
            Ok(CoreAnswer::Reload(Ok(()))) => {}
            Ok(CoreAnswer::Reload(Err(why))) => return Reply::error(ErrorKind::Refused, format!("{}: {why}", path.display())),
            Ok(_) => return Reply::error(ErrorKind::Unavailable, "unexpected answer from core 0"),
            Err(e) => return e,
        }
        let answers = match self.ask_all(|| CoreOp::Reload(config.clone(), true)).await {
            Ok(a) => a,
            Err(e) => return e,
        };
        if let Some(why) = answers.into_iter().find_map(|a| if let CoreAnswer::Reload(Err(w)) = a { Some(w) } else { None }) {
            return Reply::error(ErrorKind::Unavailable, format!("a core could not apply the new settings (it keeps the old ones): {why}"));
        }
        *self.current.borrow_mut() = (*config).clone();
        Reply::Reload(ReloadReport { path: path.display().to_string(), applied: plan.applied, needs_restart: plan.needs_restart })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_settings_are_applied_and_restart_ones_kept_and_named() {
        let old = Config::parse("[server]\nlisten = [\"127.0.0.1:25\"]\n[[route]]\ndomain = \"*\"\nhosts = [\"127.0.0.1:1\"]\n").unwrap();
        let new = Config::parse(
            "[server]\nlisten = [\"127.0.0.1:26\"]\nrelay_networks = [\"10.0.0.0/8\"]\nmax_recipients = 200\n[engine]\ncores = 3\n[[route]]\ndomain = \"*\"\nhosts = [\"127.0.0.1:2\"]\n",
        )
        .unwrap();
        let p = plan(&old, new);
        assert_eq!(p.applied, ["server.relay_networks", "server (limits and timeouts)", "route"]);
        assert_eq!(p.needs_restart, ["server.listen", "engine"]);
        assert_eq!(p.config.server.listen, ["127.0.0.1:25"], "listen stays as started");
        assert_eq!(p.config.engine.cores, old.engine.cores);
        assert_eq!((p.config.server.max_recipients, p.config.route[0].hosts[0].as_str()), (200, "127.0.0.1:2"));
    }

    #[test]
    fn dkim_and_history_apply_live_and_shaping_is_named_as_needing_a_restart() {
        let base = "[server]\nlisten = [\"127.0.0.1:25\"]\n[[route]]\ndomain = \"*\"\nhosts = [\"127.0.0.1:1\"]\n";
        let old = Config::parse(base).unwrap();
        let key = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/benches/keys/ed25519-test-only.pem");
        let extra = format!(
            "[admin]\nhistory = \"2h\"\n[[shape]]\nsite = \"*\"\nmax_connections = 3\n[[source]]\nname = \"ip2\"\nbind = \"127.0.0.2\"\n\
             [[dkim]]\ndomain = \"b.test\"\nselector = \"ed\"\nalgorithm = \"ed25519-sha256\"\nkey_file = \"{key}\"\n"
        );
        let new = Config::parse(&format!("{base}{extra}")).unwrap();
        let p = plan(&old, new);
        assert_eq!(p.applied, ["dkim", "admin.history"]);
        assert_eq!(p.needs_restart, ["source", "shape (and delivery.shaping)"]);
        assert!(p.config.shape.is_empty() && p.config.source.is_empty(), "shaping stays as started");
        assert_eq!((p.config.dkim.len(), p.config.admin.history.as_str()), (1, "2h"));
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let c = Config::parse(crate::config::DEFAULT_CONFIG).unwrap();
        let p = plan(&c, c.clone());
        assert!(p.applied.is_empty() && p.needs_restart.is_empty(), "{p:?}");
    }
}
