//! The shipped rules against replies as the large providers send them (texts from their
//! published reply references), plus the rule-file checks.
use super::BounceCategory::*;
use super::*;

fn class(status: &str, text: &str) -> BounceCategory {
    Classifier::builtin().classify(status, text)
}

#[test]
fn provider_replies_land_in_their_category() {
    let cases = [
        ("5.1.1", "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking", BadMailbox),
        ("5.5.0", "550 5.5.0 Requested action not taken: mailbox unavailable", BadMailbox),
        ("", "554 delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0]", BadMailbox),
        ("5.4.1", "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", BadMailbox),
        ("5.2.1", "550-5.2.1 The email account that you tried to reach is disabled.", InactiveMailbox),
        ("4.2.2", "452-4.2.2 The email account that you tried to reach is over quota.", Quota),
        ("", "552 mailbox full", Quota),
        ("5.1.2", "x.test: no such domain or no mail host", BadDomain),
        ("5.1.10", "x.test does not accept mail (null MX)", BadDomain),
        ("4.4.1", "connect to 127.0.0.1:9: Connection refused", NoAnswerFromHost),
        ("4.4.3", "DNS: timed out", Routing),
        ("5.4.4", "no route to x.test", Routing),
        ("5.7.1", "554 5.7.1 <x@y.test>: Relay access denied", RelayDenied),
        ("5.7.1", "550-5.7.1 Our system has detected that this message is likely unsolicited mail.", SpamRelated),
        ("5.7.1", "550 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using Spamhaus", SpamRelated),
        ("4.7.0", "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints", SpamRelated),
        ("5.7.26", "550-5.7.26 This mail is unauthenticated, which poses a security risk to the sender and Gmail users", PolicyRelated),
        ("4.7.28", "421-4.7.28 Gmail has detected an unusual rate of unsolicited mail", SpamRelated),
        ("4.7.28", "421-4.7.28 Our system has detected an unusual rate of mail originating from your IP", PolicyRelated),
        ("", "451 4.7.500 Server busy. Please try again later. (S3150)", PolicyRelated),
        ("5.3.4", "552-5.3.4 Your message exceeded Google's message size limits.", ContentRelated),
        ("5.7.0", "552-5.7.0 This message was blocked because its content presents a potential security issue (virus)", ContentRelated),
        ("5.5.2", "500 5.5.2 Syntax error, command unrecognized", ProtocolErrors),
        ("4.3.0", "451 4.3.0 Mail server temporarily rejected message.", Other),
        ("4.3.5", "451 4.3.5 <a@b.test>: Recipient address rejected: Server configuration error", Other),
        ("4.3.0", "451 4.3.0 <a@b.test>: Recipient address rejected: Temporary lookup failure", Other),
        ("5.3.5", "554 5.3.5 <a@b.test>: Recipient address rejected: Server configuration error", Other),
        // Sendmail hosts say a mailbox does not exist with 5.3.0 (sisimai's bounce samples).
        ("5.3.0", "553 5.3.0 <a@b.test>... No such user here", BadMailbox),
        ("5.3.0", "553 5.3.0 <a@b.test>... User unknown, not local address", BadMailbox),
        // Postfix's recipient restrictions share the prefix "Recipient address rejected": an
        // access-map or policy refusal is not a bad mailbox (it would be suppressed), an unknown
        // user is; a refused sender says nothing of the recipient's mailbox.
        ("5.7.1", "554 5.7.1 <a@b.test>: Recipient address rejected: Access denied", PolicyRelated),
        ("5.1.1", "550 5.1.1 <a@b.test>: Recipient address rejected: User unknown in local recipient table", BadMailbox),
        ("", "550 <a@b.test>: Recipient address rejected: User unknown in virtual mailbox table", BadMailbox),
        ("5.7.1", "553 5.7.1 <s@src.test>: Sender address rejected: not owned by user s@src.test", PolicyRelated),
        ("5.1.8", "553 5.1.8 <s@src.test>: Sender address rejected: Domain not found", PolicyRelated),
        // Sender-side refusals say nothing of the recipient (helper 66): Sendmail, Exim's
        // sender-verify callout (which echoes the sender's own "User unknown"), Exchange.
        ("5.1.8", "553 5.1.8 <s@x.test>... Domain of sender address s@x.test does not exist", PolicyRelated),
        ("5.0.0", "550-Verification failed for <s@x.test>\r\n550-Called:   192.0.2.1\r\n550-Sent:     RCPT TO:<s@x.test>\r\n550-Response: 550 5.1.1 <s@x.test>: Recipient address rejected: User unknown in local recipient table\r\n550 Sender verify failed", PolicyRelated),
        ("5.1.0", "554 5.1.0 Sender denied", PolicyRelated),
        ("5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", BadMailbox),
        ("5.0.0", "550 sorry, no mailbox here by that name. (#5.1.1)", BadMailbox),
        ("", "550 go away", Other),
    ];
    for (status, text, want) in cases {
        assert_eq!(class(status, text), want, "{status} {text}");
    }
}

#[test]
fn status_class_decides_when_no_rule_matches() {
    let c = Classifier::parse("[[rule]]\ncategory = \"other\"\npattern = \"^never$\"\n").unwrap();
    assert_eq!(c.classify("5.1.3", "x"), BadMailbox);
    assert_eq!(c.classify("5.1.10", "x"), BadDomain);
    assert_eq!(c.classify("4.2.2", "x"), Quota);
    assert_eq!(c.classify("5.6.1", "x"), ContentRelated);
    assert_eq!(c.classify("5.7.9", "x"), PolicyRelated);
    assert_eq!(c.classify("4.4.7", "x"), Routing);
    assert_eq!(c.classify("", "x"), Other);
    assert_eq!(c.classify("5.x.1", "x"), Other);
}

#[test]
fn status_prefixes_match_whole_fields() {
    assert!(status_matches("5.1.1", "5.1.1"));
    assert!(status_matches("5.6.1", "5.6"));
    assert!(!status_matches("5.1.10", "5.1.1"), "5.1.10 is not 5.1.1");
    assert!(!status_matches("5.61.0", "5.6"));
}

#[test]
fn first_match_wins_and_conditions_combine() {
    let c = Classifier::parse(
        r#"
[[rule]]
category = "quota"
status = ["4.2"]
pattern = "full"
[[rule]]
category = "spam-related"
pattern = "full"
"#,
    )
    .unwrap();
    assert_eq!(c.classify("4.2.2", "mailbox full"), Quota);
    assert_eq!(c.classify("4.3.0", "disk full"), SpamRelated, "status must hold too");
}

#[test]
fn bad_rule_files_are_refused_with_their_reason() {
    assert!(matches!(Classifier::parse("[[rule]]\ncategory = \"no-such\"\npattern = \"x\"\n"), Err(RulesError::Parse(_))));
    assert!(matches!(Classifier::parse("[[rule]]\ncategory = \"quota\"\npattern = \"(\"\n"), Err(RulesError::Pattern { index: 1, .. })));
    assert!(matches!(Classifier::parse("[[rule]]\ncategory = \"quota\"\n"), Err(RulesError::Empty(1))));
    assert!(matches!(Classifier::parse("[[rule]]\ncategory = \"quota\"\nstatus = [\"4.2.2\"]\ncolour = 1\n"), Err(RulesError::Parse(_))));
}

#[test]
fn names_match_the_serde_names() {
    for c in [
        BadMailbox,
        InactiveMailbox,
        Quota,
        BadDomain,
        NoAnswerFromHost,
        Routing,
        RelayDenied,
        SpamRelated,
        PolicyRelated,
        MessageExpired,
        ContentRelated,
        ProtocolErrors,
        Other,
    ] {
        let via_serde: String = serde_json::from_value(serde_json::to_value(c).unwrap()).unwrap();
        assert_eq!(via_serde, c.as_str());
    }
}
