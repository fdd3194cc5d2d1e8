//! The suppression list's journal and lookups.
use super::*;
use glommio::LocalExecutorBuilder;

fn run<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(f: impl FnOnce() -> F + Send + 'static) -> T {
    LocalExecutorBuilder::default().spawn(f).unwrap().join().unwrap()
}

#[test]
fn adds_and_removes_survive_a_reopen_and_lookups_ignore_case() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("suppression.jsonl");
    let p = path.clone();
    run(move || async move {
        let s = SuppressionList::open(&p).unwrap();
        s.add("Gone@Example.ORG", BounceCategory::BadMailbox, "550 5.1.1 no such user", 100).await.unwrap();
        s.add("old@example.org", BounceCategory::InactiveMailbox, "550 5.2.1 disabled", 101).await.unwrap();
        s.add("tmp@example.org", BounceCategory::Other, "by hand", 102).await.unwrap();
        assert!(s.remove("TMP@example.org", 103).await.unwrap());
        assert!(!s.remove("never@example.org", 104).await.unwrap(), "removing what is not listed is a no-op");
        assert_eq!(s.check("<gone@example.org>"), Some(Suppressed { category: BounceCategory::BadMailbox, since_s: 100 }));
        assert_eq!(s.check("tmp@example.org"), None);
    });
    let s = SuppressionList::open(&path).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s.check("GONE@example.org").map(|x| x.category), Some(BounceCategory::BadMailbox));
    assert_eq!(s.check("old@example.org").map(|x| x.since_s), Some(101));
    assert_eq!(s.check("tmp@example.org"), None, "a removal is durable too");
    let listed: Vec<(String, String)> = s.list().unwrap().into_iter().map(|(a, _, r)| (a, r)).collect();
    assert_eq!(listed, vec![("Gone@Example.ORG".into(), "550 5.1.1 no such user".into()), ("old@example.org".into(), "550 5.2.1 disabled".into())]);
}

#[test]
fn a_torn_last_line_is_skipped_and_the_rest_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    std::fs::write(&path, "{\"op\":\"add\",\"addr\":\"a@x.test\",\"category\":\"bad-mailbox\",\"time_s\":5}\n{\"op\":\"add\",\"addr\":\"b@x")
        .unwrap();
    let s = SuppressionList::open(&path).unwrap();
    assert_eq!(s.len(), 1);
    assert!(s.check("a@x.test").is_some() && s.check("b@x").is_none());
}

#[test]
fn a_mostly_dead_journal_is_compacted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let mut text = String::new();
    for i in 0..3000 {
        text += &format!("{{\"op\":\"add\",\"addr\":\"u{i}@x.test\",\"category\":\"bad-mailbox\",\"time_s\":{i}}}\n");
        if i % 10 != 0 {
            text += &format!("{{\"op\":\"remove\",\"addr\":\"u{i}@x.test\",\"time_s\":{i}}}\n");
        }
    }
    std::fs::write(&path, text).unwrap();
    let s = SuppressionList::open(&path).unwrap();
    assert_eq!(s.len(), 300);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 300, "compacted to the live entries");
    let again = SuppressionList::open(&path).unwrap();
    assert_eq!(again.len(), 300);
    assert!(again.check("u10@x.test").is_some() && again.check("u11@x.test").is_none());
}

#[test]
fn a_million_entries_cost_bounded_memory() {
    // Entries hold a 64-bit key and 16 bytes of value whatever the address length: measure the
    // map's growth through the allocator-independent view of its own size accounting.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let mut text = String::with_capacity(80 << 20);
    for i in 0..1_000_000u32 {
        text += &format!(
            "{{\"op\":\"add\",\"addr\":\"a-rather-long-local-part-{i}@some-subdomain.example.org\",\"category\":\"bad-mailbox\",\"time_s\":1}}\n"
        );
    }
    std::fs::write(&path, text).unwrap();
    let before = rss_anon_kib();
    let s = SuppressionList::open(&path).unwrap();
    let grown = rss_anon_kib().saturating_sub(before);
    assert_eq!(s.len(), 1_000_000);
    assert!(s.check("a-rather-long-local-part-999999@some-subdomain.example.org").is_some());
    // 1M x (8 + 16) bytes is 24 MB of payload; the map's buckets roughly double it. The
    // addresses (~55 MB) and the journal text must not stay resident.
    eprintln!("suppression: 1,000,000 entries, {grown} KiB resident");
    assert!(grown < 80 * 1024, "a million entries left {grown} KiB resident");
}

fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find(|l| l.starts_with("RssAnon:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}
