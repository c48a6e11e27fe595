//! An IP network (`10.0.0.0/8`, `fd00:ec2::254/128`, or a single address), and the
//! IPv4 address that an IPv6 address stands for.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A network in CIDR notation. An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is
/// kept as the IPv4 network it names, so that it matches the same addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("{0:?} is not an IP address")]
    Address(String),
    #[error("{0:?} is not a prefix length (0 to 32 for IPv4, 0 to 128 for IPv6)")]
    Prefix(String),
    #[error("{network} has bits set past its prefix; did you mean {meant}?")]
    HostBits { network: String, meant: String },
}

impl Network {
    /// `addr/prefix`; refused when bits past the prefix are set (`10.1.0.0/8` is more
    /// likely a typo than a wish for `10.0.0.0/8`).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Network, NetworkError> {
        let width = width(addr);
        if prefix > width {
            return Err(NetworkError::Prefix(prefix.to_string()));
        }
        let network = Network { addr, prefix };
        let masked = network.masked();
        if masked != addr {
            return Err(NetworkError::HostBits {
                network: format!("{addr}/{prefix}"),
                meant: format!("{masked}/{prefix}"),
            });
        }
        Ok(network.canonical())
    }

    /// One address: a /32 or a /128.
    pub fn host(addr: IpAddr) -> Network {
        Network {
            addr,
            prefix: width(addr),
        }
        .canonical()
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` is in this network; an address of the other family never is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask_v4(self.prefix);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask_v6(self.prefix);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }

    fn masked(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(self.prefix))),
        }
    }

    fn canonical(self) -> Network {
        match self.addr {
            IpAddr::V6(v6) if self.prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Network {
                    addr: IpAddr::V4(v4),
                    prefix: self.prefix - 96,
                },
                None => self,
            },
            _ => self,
        }
    }
}

fn width(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Network {
    type Err = NetworkError;

    /// `10.0.0.0/8`, `fe80::/10`, or one address (`10.1.2.3`, `::1`).
    fn from_str(text: &str) -> Result<Network, NetworkError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| NetworkError::Address(addr.to_string()))?;
        match prefix {
            None => Ok(Network::host(addr)),
            Some(prefix) => {
                let length = prefix
                    .parse::<u8>()
                    .map_err(|_| NetworkError::Prefix(prefix.to_string()))?;
                Network::new(addr, length)
            }
        }
    }
}

/// The IPv4 address an IPv6 address reaches, when it is an IPv6 form of one:
/// IPv4-mapped (`::ffff:a.b.c.d`: the kernel connects over IPv4), IPv4-compatible
/// (`::a.b.c.d`, deprecated, but a host with a `sit` tunnel still sends it to
/// a.b.c.d), or NAT64's well-known prefix (`64:ff9b::a.b.c.d`, which a NAT64 gateway
/// translates). `::` and `::1` are their own IPv6 addresses, not IPv4 ones.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let bits = u128::from(ip);
    let low = Ipv4Addr::from(bits as u32);
    const NAT64: u128 = 0x0064_ff9b << 96;
    if bits >> 32 == NAT64 >> 32 {
        return Some(low);
    }
    // IPv4-compatible: 96 zero bits, then an IPv4 address that is not 0.x.x.x (which
    // is where `::` and `::1` fall).
    if bits >> 32 == 0 && low.octets()[0] != 0 {
        return Some(low);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Network {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_and_no_others() {
        let ten = net("10.0.0.0/8");
        assert!(ten.contains(ip("10.0.0.0")));
        assert!(ten.contains(ip("10.255.255.255")));
        assert!(!ten.contains(ip("11.0.0.0")));
        assert!(!ten.contains(ip("::ffff:10.0.0.1")), "families never mix");
        let fe80 = net("fe80::/10");
        assert!(fe80.contains(ip("febf::1")));
        assert!(!fe80.contains(ip("fec0::1")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        assert!(net("10.1.2.3").contains(ip("10.1.2.3")));
        assert!(!net("10.1.2.3").contains(ip("10.1.2.4")));
        assert_eq!(net("10.1.2.3").prefix(), 32);
        assert_eq!(net("::1").prefix(), 128);
    }

    #[test]
    fn mapped_networks_are_kept_as_ipv4() {
        assert_eq!(net("::ffff:10.0.0.0/104"), net("10.0.0.0/8"));
        assert_eq!(net("::ffff:127.0.0.1"), net("127.0.0.1/32"));
        assert_eq!(net("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn typos_are_refused_with_what_was_meant() {
        assert_eq!(
            "10.1.0.0/8".parse::<Network>(),
            Err(NetworkError::HostBits {
                network: "10.1.0.0/8".into(),
                meant: "10.0.0.0/8".into()
            })
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<Network>(),
            Err(NetworkError::Prefix(_))
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Network>(),
            Err(NetworkError::Prefix(_))
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Network>(),
            Err(NetworkError::Address(_))
        ));
    }

    #[test]
    fn ipv6_forms_of_ipv4_addresses_are_recognised() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let v4 = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            embedded_ipv4(v6("::ffff:169.254.169.254")),
            v4("169.254.169.254")
        );
        assert_eq!(embedded_ipv4(v6("::ffff:0.0.0.0")), v4("0.0.0.0"));
        assert_eq!(
            embedded_ipv4(v6("64:ff9b::a9fe:a9fe")),
            v4("169.254.169.254")
        );
        assert_eq!(embedded_ipv4(v6("::127.0.0.1")), v4("127.0.0.1"));
        assert_eq!(embedded_ipv4(v6("::1")), None);
        assert_eq!(embedded_ipv4(v6("::")), None);
        assert_eq!(embedded_ipv4(v6("2001:db8::a9fe:a9fe")), None);
        assert_eq!(embedded_ipv4(v6("fd00:ec2::254")), None);
    }
}
