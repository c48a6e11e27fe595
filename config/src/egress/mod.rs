//! Where dispatchers may connect: the egress policy. Pure: the dispatcher's HTTP
//! client asks it about each address a new connection would go to (after DNS), the
//! operator and `fanout standalone` parse their flags with it.
//!
//! By default loopback, unspecified, link-local and cloud metadata addresses and the
//! Kubernetes apiserver's addresses are refused. The platform adds entries to deny
//! and to allow: networks, single addresses or host names. How one address is
//! decided:
//!
//! 1. The most specific network that contains it decides (longest prefix), so
//!    allowing `10.0.0.0/8` does not allow an apiserver at `10.0.0.1`, and allowing
//!    `169.254.0.0/16` does not allow the metadata address `169.254.169.254`.
//! 2. Between networks of the same length, a deny entry beats an allow entry, and an
//!    allow entry beats a default: allowing `127.0.0.0/8` allows loopback.
//! 3. An IPv6 form of an IPv4 address (`::ffff:127.0.0.1`, `64:ff9b::a9fe:a9fe`) is
//!    refused when either form is.
//!
//! Host names are matched before resolving: a denied host is refused whatever it
//! resolves to, an allowed one is connected to whatever it resolves to (so allow only
//! names that nobody but the platform can point elsewhere). Any other name is
//! resolved, and only its allowed addresses are connected to.

mod entry;
mod network;

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

pub use entry::{Entry, EntryError};
pub use network::{Network, NetworkError, embedded_ipv4};

/// Why the defaults refuse an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Loopback,
    Unspecified,
    LinkLocal,
    Metadata,
    Apiserver,
}

impl Class {
    fn describe(self) -> &'static str {
        match self {
            Class::Loopback => "loopback",
            Class::Unspecified => "unspecified (it reaches this host)",
            Class::LinkLocal => "link-local",
            Class::Metadata => "a cloud metadata address",
            Class::Apiserver => "the Kubernetes apiserver",
        }
    }
}

/// Networks refused by default, loopback aside (see [`Settings::deny_loopback`]).
const DEFAULTS: [(&str, Class); 8] = [
    // 0.0.0.0 and :: reach the local host when connected to.
    ("0.0.0.0/8", Class::Unspecified),
    ("::/128", Class::Unspecified),
    ("169.254.0.0/16", Class::LinkLocal),
    ("fe80::/10", Class::LinkLocal),
    // AWS, GCP, Azure, OCI, OpenStack, DigitalOcean; AWS's IPv6 one; Alibaba Cloud;
    // Azure's host agent (WireServer). More specific than link-local, so that
    // allowing 169.254.0.0/16 (a node-local DNS cache, say) does not allow them.
    ("169.254.169.254/32", Class::Metadata),
    ("fd00:ec2::254/128", Class::Metadata),
    ("100.100.100.200/32", Class::Metadata),
    ("168.63.129.16/32", Class::Metadata),
];

const LOOPBACK: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// What a policy is made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Refuse loopback unless allowed: true for dispatcher pods, false by default in
    /// `fanout standalone`, whose targets often run on the same machine.
    pub deny_loopback: bool,
    /// The Kubernetes apiserver's addresses (the operator tells its dispatchers).
    pub apiserver: Vec<IpAddr>,
    /// The platform's entries.
    pub deny: Vec<Entry>,
    pub allow: Vec<Entry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Deny,
    Allow,
    Default(Class),
}

impl Action {
    /// Which wins between networks of the same length: lower first.
    fn rank(self) -> u8 {
        match self {
            Action::Deny => 0,
            Action::Allow => 1,
            Action::Default(_) => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule {
    network: Network,
    action: Action,
}

/// The egress policy of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Most specific first; the first that contains an address decides.
    rules: Vec<Rule>,
    deny_hosts: BTreeSet<String>,
    allow_hosts: BTreeSet<String>,
    settings: Settings,
}

/// What a host name in a target URL means, before resolving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostRule {
    /// On the deny list: refused whatever it resolves to.
    Denied,
    /// On the allow list: connected to whatever it resolves to.
    Allowed,
    /// Resolve it, and connect only to its allowed addresses.
    ByAddress,
}

/// Why an address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Default(Class),
    Denied,
}

/// One refused address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressRefusal {
    pub address: IpAddr,
    /// The IPv4 address it stands for, when that is what was refused.
    pub via: Option<Ipv4Addr>,
    /// The network (default or entry) that refused it.
    pub network: Network,
    pub why: Why,
}

/// Why a connection is not made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The URL's host is a refused address.
    Address(AddressRefusal),
    /// The URL's host is a denied host name.
    Host(String),
    /// The URL's host is a name whose every address is refused.
    Resolved {
        name: String,
        refused: Vec<AddressRefusal>,
    },
}

impl EgressPolicy {
    pub fn new(settings: Settings) -> EgressPolicy {
        let mut rules = Vec::new();
        let fixed = |text: &str| text.parse::<Network>().expect("the defaults are valid");
        if settings.deny_loopback {
            for network in LOOPBACK {
                rules.push(Rule {
                    network: fixed(network),
                    action: Action::Default(Class::Loopback),
                });
            }
        }
        for (network, class) in DEFAULTS {
            rules.push(Rule {
                network: fixed(network),
                action: Action::Default(class),
            });
        }
        for address in &settings.apiserver {
            rules.push(Rule {
                network: Network::host(*address),
                action: Action::Default(Class::Apiserver),
            });
        }
        let mut deny_hosts = BTreeSet::new();
        let mut allow_hosts = BTreeSet::new();
        for (entries, action, hosts) in [
            (&settings.deny, Action::Deny, &mut deny_hosts),
            (&settings.allow, Action::Allow, &mut allow_hosts),
        ] {
            for entry in entries {
                match entry {
                    Entry::Network(network) => rules.push(Rule {
                        network: *network,
                        action,
                    }),
                    Entry::Host(host) => {
                        hosts.insert(host.clone());
                    }
                }
            }
        }
        rules.sort_by_key(|r| (Reverse(r.network.prefix()), r.action.rank()));
        EgressPolicy {
            rules,
            deny_hosts,
            allow_hosts,
            settings,
        }
    }

    /// What the entries say about host name `name` (as a URL carries it).
    pub fn host(&self, name: &str) -> HostRule {
        let name = Entry::normalize_host(name);
        if self.deny_hosts.contains(&name) {
            HostRule::Denied
        } else if self.allow_hosts.contains(&name) {
            HostRule::Allowed
        } else {
            HostRule::ByAddress
        }
    }

    /// Whether a connection to `address` may be made.
    pub fn check(&self, address: IpAddr) -> Result<(), AddressRefusal> {
        if let Some((network, why)) = self.decide(address) {
            return Err(AddressRefusal {
                address,
                via: None,
                network,
                why,
            });
        }
        if let IpAddr::V6(v6) = address
            && let Some(v4) = embedded_ipv4(v6)
            && let Some((network, why)) = self.decide(IpAddr::V4(v4))
        {
            return Err(AddressRefusal {
                address,
                via: Some(v4),
                network,
                why,
            });
        }
        Ok(())
    }

    fn decide(&self, address: IpAddr) -> Option<(Network, Why)> {
        let rule = self.rules.iter().find(|r| r.network.contains(address))?;
        match rule.action {
            Action::Allow => None,
            Action::Deny => Some((rule.network, Why::Denied)),
            Action::Default(class) => Some((rule.network, Why::Default(class))),
        }
    }

    /// What the policy was made of.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// The policy of dispatcher pods before the platform adds anything: loopback refused.
impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy::new(Settings {
            deny_loopback: true,
            ..Settings::default()
        })
    }
}

/// One line for the start-up log: what is refused and what the platform added.
impl fmt::Display for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        let mut refused = Vec::new();
        if s.deny_loopback {
            refused.push("loopback".to_string());
        }
        refused.push("unspecified, link-local and cloud metadata addresses".into());
        if !s.apiserver.is_empty() {
            let list: Vec<String> = s.apiserver.iter().map(|a| a.to_string()).collect();
            refused.push(format!("the apiserver ({})", list.join(", ")));
        }
        let list = |entries: &[Entry]| {
            let all: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
            if all.is_empty() {
                "-".to_string()
            } else {
                all.join(", ")
            }
        };
        write!(
            f,
            "refusing {}; denied: {}; allowed: {}",
            refused.join(", "),
            list(&s.deny),
            list(&s.allow)
        )
    }
}

impl fmt::Display for AddressRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.why {
            Why::Default(class) => format!("is {}", class.describe()),
            Why::Denied => "is on the egress deny list".to_string(),
        };
        match self.via {
            None => write!(f, "{} {what} ({})", self.address, self.network),
            Some(v4) => write!(f, "{} {what} (as {v4}, in {})", self.address, self.network),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let refused = match self {
            Refusal::Host(host) => return write!(f, "host {host} is on the egress deny list"),
            Refusal::Address(refusal) => {
                refusal.fmt(f)?;
                std::slice::from_ref(refusal)
            }
            Refusal::Resolved { name, refused } => {
                let list: Vec<String> = refused.iter().map(|r| r.to_string()).collect();
                write!(
                    f,
                    "{name} resolves only to refused addresses: {}",
                    list.join("; ")
                )?;
                refused.as_slice()
            }
        };
        // Refused by default: say how to allow it. A deny entry was the platform's
        // deliberate choice; nothing to suggest.
        let networks: BTreeSet<String> = refused
            .iter()
            .filter(|r| matches!(r.why, Why::Default(_)))
            .map(|r| r.network.to_string())
            .collect();
        if !networks.is_empty() {
            let networks: Vec<String> = networks.into_iter().collect();
            write!(
                f,
                "; refused by default: to allow it, add {} to the egress allow list (flag --egress-allow, chart value dispatcher.egress.allow)",
                networks.join(", ")
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests;
