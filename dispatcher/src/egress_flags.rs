//! The egress flags of `fanout dispatch` and `fanout standalone`: what the platform
//! adds to the default policy ([`fanout_config::egress`]).

use std::net::IpAddr;

use fanout_config::egress::{EgressPolicy, Entry, Settings};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct EgressArgs {
    /// Networks (10.0.0.0/8), addresses or host names that targets must not be
    /// connected to, besides the defaults (loopback, link-local, cloud metadata and
    /// unspecified addresses, the apiserver). Comma-separated, or repeat the flag.
    #[arg(
        long = "egress-deny",
        env = "FANOUT_EGRESS_DENY",
        value_delimiter = ',',
        value_name = "NETWORK|HOST"
    )]
    pub deny: Vec<Entry>,

    /// Networks, addresses or host names that targets may be connected to although a
    /// default or a wider deny entry refuses them: the most specific network decides
    /// (allowing 10.0.0.0/8 does not allow an apiserver at 10.0.0.1), and an allowed
    /// host name is connected to whatever it resolves to.
    #[arg(
        long = "egress-allow",
        env = "FANOUT_EGRESS_ALLOW",
        value_delimiter = ',',
        value_name = "NETWORK|HOST"
    )]
    pub allow: Vec<Entry>,

    /// The Kubernetes apiserver's addresses, refused unless allowed one by one (the
    /// operator sets these on the dispatcher pods it creates).
    #[arg(
        long = "egress-apiserver",
        env = "FANOUT_EGRESS_APISERVER",
        value_delimiter = ',',
        value_name = "ADDRESS"
    )]
    pub apiserver: Vec<IpAddr>,
}

impl EgressArgs {
    /// The policy these flags make, loopback refused or not by default.
    pub fn policy(&self, deny_loopback: bool) -> EgressPolicy {
        EgressPolicy::new(Settings {
            deny_loopback,
            apiserver: self.apiserver.clone(),
            deny: self.deny.clone(),
            allow: self.allow.clone(),
        })
    }
}
