//! The unit every per-address bound counts by (login limits, failure records,
//! connection caps): one rule, so that no bound can be slipped by moving within a /64.

use std::net::IpAddr;

/// The unit every per-address bound counts by: an IPv4 address, or the /64 of an IPv6
/// one (a single host is commonly given a whole /64). An IPv4-mapped IPv6 address is
/// its IPv4 address.
pub fn counted(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_slash_64_is_one_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(counted(a), counted(b));
        assert_ne!(counted(a), counted(c));
        assert_eq!(counted(a), "2001:db8:1:2::".parse::<IpAddr>().expect("ip"));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(counted(mapped), "10.0.0.1".parse::<IpAddr>().expect("ip"));
        let v4: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(counted(v4), v4);
    }
}
