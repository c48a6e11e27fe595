use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn entries(list: &[&str]) -> Vec<Entry> {
    list.iter().map(|e| e.parse().unwrap()).collect()
}

/// A dispatcher pod's policy: loopback refused, the apiserver at 10.96.0.1 and
/// 192.0.2.10, plus the platform's entries.
fn pod_policy(deny: &[&str], allow: &[&str]) -> EgressPolicy {
    EgressPolicy::new(Settings {
        deny_loopback: true,
        apiserver: vec![ip("10.96.0.1"), ip("192.0.2.10"), ip("fd00:10:96::1")],
        deny: entries(deny),
        allow: entries(allow),
    })
}

fn why(policy: &EgressPolicy, address: &str) -> Option<Why> {
    policy.check(ip(address)).err().map(|r| r.why)
}

#[test]
fn loopback_is_refused_in_every_form() {
    let p = pod_policy(&[], &[]);
    for a in [
        "127.0.0.1",
        "127.1.2.3",
        "127.255.255.254",
        "::1",
        "::ffff:127.0.0.1",
    ] {
        assert_eq!(why(&p, a), Some(Why::Default(Class::Loopback)), "{a}");
    }
    let mapped = p.check(ip("::ffff:127.0.0.1")).unwrap_err();
    assert_eq!(mapped.via, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(
        mapped.to_string(),
        "::ffff:127.0.0.1 is loopback (as 127.0.0.1, in 127.0.0.0/8)"
    );
}

#[test]
fn link_local_and_metadata_addresses_are_refused_in_every_form() {
    let p = pod_policy(&[], &[]);
    for a in ["169.254.0.1", "169.254.170.2", "fe80::1", "febf:ffff::1"] {
        assert_eq!(why(&p, a), Some(Why::Default(Class::LinkLocal)), "{a}");
    }
    for a in [
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "::ffff:a9fe:a9fe",
        "64:ff9b::169.254.169.254",
        "::169.254.169.254",
        "fd00:ec2::254",
        "100.100.100.200",
        "168.63.129.16",
    ] {
        assert_eq!(why(&p, a), Some(Why::Default(Class::Metadata)), "{a}");
    }
    assert_eq!(
        p.check(ip("169.254.169.254")).unwrap_err().to_string(),
        "169.254.169.254 is a cloud metadata address (169.254.169.254/32)"
    );
    // Its neighbours in the same ULA are nobody's metadata service.
    assert_eq!(why(&p, "fd00:ec2::253"), None);
}

#[test]
fn unspecified_addresses_are_refused_in_every_form() {
    let p = pod_policy(&[], &[]);
    for a in ["0.0.0.0", "0.1.2.3", "::", "::ffff:0.0.0.0"] {
        assert_eq!(why(&p, a), Some(Why::Default(Class::Unspecified)), "{a}");
    }
}

#[test]
fn the_apiservers_addresses_are_refused_in_every_form() {
    let p = pod_policy(&[], &[]);
    for a in [
        "10.96.0.1",
        "192.0.2.10",
        "::ffff:10.96.0.1",
        "fd00:10:96::1",
    ] {
        assert_eq!(why(&p, a), Some(Why::Default(Class::Apiserver)), "{a}");
    }
    assert_eq!(
        p.check(ip("10.96.0.1")).unwrap_err().to_string(),
        "10.96.0.1 is the Kubernetes apiserver (10.96.0.1/32)"
    );
    // Only those addresses: the rest of the service network is not the apiserver.
    assert_eq!(why(&p, "10.96.0.2"), None);
}

#[test]
fn ordinary_addresses_are_allowed() {
    let p = pod_policy(&[], &[]);
    for a in [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "203.0.113.7",
        "2001:db8::1",
        "fd12::1",
        "64:ff9b::203.0.113.7",
        "::ffff:203.0.113.7",
    ] {
        assert_eq!(p.check(ip(a)), Ok(()), "{a}");
    }
}

#[test]
fn standalone_allows_loopback_unless_told_otherwise() {
    let standalone = EgressPolicy::new(Settings::default());
    assert_eq!(standalone.check(ip("127.0.0.1")), Ok(()));
    assert_eq!(standalone.check(ip("::1")), Ok(()));
    assert_eq!(
        why(&standalone, "169.254.169.254"),
        Some(Why::Default(Class::Metadata)),
        "the rest of the defaults stand"
    );
    assert_eq!(
        why(&standalone, "0.0.0.0"),
        Some(Why::Default(Class::Unspecified))
    );
    assert_eq!(
        why(&EgressPolicy::default(), "127.0.0.1"),
        Some(Why::Default(Class::Loopback)),
        "the default is a pod's"
    );
}

#[test]
fn an_allow_entry_overrides_the_defaults_it_names() {
    let p = pod_policy(&[], &["127.0.0.0/8", "169.254.0.0/16"]);
    assert_eq!(p.check(ip("127.0.0.1")), Ok(()));
    assert_eq!(p.check(ip("::ffff:127.0.0.1")), Ok(()));
    assert_eq!(p.check(ip("169.254.20.10")), Ok(()), "node-local DNS cache");
    assert_eq!(why(&p, "::1"), Some(Why::Default(Class::Loopback)));
    // More specific defaults still stand: the metadata address and the apiserver.
    assert_eq!(
        why(&p, "169.254.169.254"),
        Some(Why::Default(Class::Metadata))
    );
    let p = pod_policy(&[], &["10.0.0.0/8"]);
    assert_eq!(p.check(ip("10.1.2.3")), Ok(()));
    assert_eq!(why(&p, "10.96.0.1"), Some(Why::Default(Class::Apiserver)));
    // Named exactly, they are allowed too.
    let p = pod_policy(&[], &["169.254.169.254", "10.96.0.1/32"]);
    assert_eq!(p.check(ip("169.254.169.254")), Ok(()));
    assert_eq!(p.check(ip("10.96.0.1")), Ok(()));
}

#[test]
fn the_most_specific_entry_wins_and_deny_wins_a_tie() {
    let p = pod_policy(&["10.0.0.0/8"], &["10.1.2.0/24"]);
    assert_eq!(why(&p, "10.9.9.9"), Some(Why::Denied));
    assert_eq!(p.check(ip("10.1.2.3")), Ok(()));
    let p = pod_policy(&["10.1.2.3"], &["10.0.0.0/8"]);
    assert_eq!(why(&p, "10.1.2.3"), Some(Why::Denied));
    assert_eq!(p.check(ip("10.1.2.4")), Ok(()));
    let p = pod_policy(&["10.0.0.0/8"], &["10.0.0.0/8"]);
    assert_eq!(why(&p, "10.1.2.3"), Some(Why::Denied));
    // A deny entry reaches the IPv6 forms of the addresses it holds.
    let p = pod_policy(&["203.0.113.0/24"], &[]);
    assert_eq!(why(&p, "::ffff:203.0.113.7"), Some(Why::Denied));
    assert_eq!(why(&p, "64:ff9b::203.0.113.7"), Some(Why::Denied));
    // And an IPv6 deny entry on NAT64 stands although the IPv4 form is allowed.
    let p = pod_policy(&["64:ff9b::/96"], &[]);
    assert_eq!(why(&p, "64:ff9b::203.0.113.7"), Some(Why::Denied));
}

#[test]
fn host_entries_decide_before_resolving() {
    let p = pod_policy(&["evil.example"], &["Metadata.Internal."]);
    assert_eq!(p.host("evil.example"), HostRule::Denied);
    assert_eq!(p.host("EVIL.example."), HostRule::Denied);
    assert_eq!(p.host("metadata.internal"), HostRule::Allowed);
    assert_eq!(p.host("api.example"), HostRule::ByAddress);
    let both = pod_policy(&["api.example"], &["api.example"]);
    assert_eq!(
        both.host("api.example"),
        HostRule::Denied,
        "deny wins a tie"
    );
}

#[test]
fn refusals_say_why_and_how_to_allow_what_the_defaults_refuse() {
    let p = pod_policy(&["10.0.0.0/8"], &[]);
    let address = Refusal::Address(p.check(ip("127.0.0.1")).unwrap_err());
    assert_eq!(
        address.to_string(),
        "127.0.0.1 is loopback (127.0.0.0/8); refused by default: to allow it, add 127.0.0.0/8 \
         to the egress allow list (flag --egress-allow, chart value dispatcher.egress.allow)"
    );
    let resolved = Refusal::Resolved {
        name: "localhost".into(),
        refused: vec![
            p.check(ip("127.0.0.1")).unwrap_err(),
            p.check(ip("::1")).unwrap_err(),
        ],
    };
    let text = resolved.to_string();
    assert!(
        text.starts_with(
            "localhost resolves only to refused addresses: 127.0.0.1 is loopback (127.0.0.0/8); \
             ::1 is loopback (::1/128); refused by default: to allow it, add 127.0.0.0/8, ::1/128 "
        ),
        "{text}"
    );
    let denied = Refusal::Address(p.check(ip("10.2.3.4")).unwrap_err());
    assert_eq!(
        denied.to_string(),
        "10.2.3.4 is on the egress deny list (10.0.0.0/8)"
    );
    assert_eq!(
        Refusal::Host("evil.example".into()).to_string(),
        "host evil.example is on the egress deny list"
    );
}

#[test]
fn the_start_up_line_lists_what_is_refused() {
    let p = pod_policy(&["10.0.0.0/8", "evil.example"], &["10.1.0.0/16"]);
    assert_eq!(
        p.to_string(),
        "refusing loopback, unspecified, link-local and cloud metadata addresses, the apiserver \
         (10.96.0.1, 192.0.2.10, fd00:10:96::1); denied: 10.0.0.0/8, evil.example; allowed: 10.1.0.0/16"
    );
}
