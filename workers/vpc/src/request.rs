//! A VPC request: its shape (what the gateway already checked) and what only the worker can
//! check: subnets inside the VPC, no two overlapping, availability zones of the region.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `{"vpc": {"cidr"}, "subnets": [{"cidr", "az", "name"?}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VpcRequest {
    /// The VPC.
    pub vpc: VpcSpec,
    /// Its subnets, 1 to 20.
    pub subnets: Vec<SubnetSpec>,
}

/// The VPC's address range.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VpcSpec {
    /// IPv4 CIDR, prefix /16 to /28.
    pub cidr: String,
}

/// One subnet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetSpec {
    /// IPv4 CIDR inside the VPC's.
    pub cidr: String,
    /// Availability zone, e.g. `us-east-1a`.
    pub az: String,
    /// Optional name (tag `SubnetName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An IPv4 network: address and prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// First address, as a number.
    pub base: u32,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Number of addresses.
    fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The last address.
    fn last(&self) -> u64 {
        u64::from(self.base) + self.size() - 1
    }

    /// Whether `other` lies wholly inside this network.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.base >= self.base && other.last() <= self.last()
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        u64::from(self.base) <= other.last() && u64::from(other.base) <= self.last()
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s}: not a CIDR (a.b.c.d/n)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s}: not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (16..=28).contains(p))
            .ok_or_else(|| format!("{s}: the prefix must be /16 to /28"))?;
        let base = u32::from(addr);
        let mask = u32::MAX << (32 - u32::from(prefix));
        if base & !mask != 0 {
            return Err(format!(
                "{s}: host bits are set (the network is {}/{prefix})",
                Ipv4Addr::from(base & mask)
            ));
        }
        Ok(Self { base, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// Why a request cannot be carried out, whatever EC2 would say.
pub type Invalid = String;

impl VpcRequest {
    /// Checks what the gateway cannot: every CIDR a network, subnets inside the VPC and not
    /// overlapping each other, AZs among `zones`, names unique. The first problem found.
    pub fn validate(&self, zones: &[String]) -> Result<(), Invalid> {
        let vpc: Cidr = self.vpc.cidr.parse()?;
        if self.subnets.is_empty() || self.subnets.len() > 20 {
            return Err("1 to 20 subnets".into());
        }
        let mut seen: Vec<(usize, Cidr)> = Vec::new();
        for (i, s) in self.subnets.iter().enumerate() {
            let cidr: Cidr = s.cidr.parse().map_err(|e| format!("subnet {i}: {e}"))?;
            if !vpc.contains(&cidr) {
                return Err(format!("subnet {i}: {cidr} is not inside the VPC's {vpc}"));
            }
            if let Some((j, other)) = seen.iter().find(|(_, o)| o.overlaps(&cidr)) {
                return Err(format!("subnet {i}: {cidr} overlaps subnet {j} ({other})"));
            }
            if !zones.contains(&s.az) {
                return Err(format!(
                    "subnet {i}: availability zone {} does not exist in this region (it has {})",
                    s.az,
                    zones.join(", ")
                ));
            }
            if let Some(name) = &s.name {
                if self.subnets[..i]
                    .iter()
                    .any(|o| o.name.as_ref() == Some(name))
                {
                    return Err(format!("subnet {i}: the name {name:?} is used twice"));
                }
            }
            seen.push((i, cidr));
        }
        Ok(())
    }

    /// The canonical form the payload hash is taken of (field order fixed by the types).
    pub fn canonical(&self) -> String {
        serde_json::to_string(self).expect("a request serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones() -> Vec<String> {
        vec!["us-east-1a".into(), "us-east-1b".into()]
    }

    fn request(vpc: &str, subnets: &[(&str, &str)]) -> VpcRequest {
        VpcRequest {
            vpc: VpcSpec { cidr: vpc.into() },
            subnets: subnets
                .iter()
                .map(|(cidr, az)| SubnetSpec {
                    cidr: (*cidr).into(),
                    az: (*az).into(),
                    name: None,
                })
                .collect(),
        }
    }

    #[test]
    fn cidrs_parse_strictly() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.0.0/16");
        for bad in [
            "10.1.0.0",
            "10.1.0.0/15",
            "10.1.0.0/29",
            "300.1.0.0/16",
            "10.1.0.1/16",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let err = "10.1.0.1/16".parse::<Cidr>().unwrap_err();
        assert!(err.contains("10.1.0.0/16"), "{err}");
    }

    #[test]
    fn containment_and_overlap() {
        let vpc: Cidr = "10.0.0.0/16".parse().unwrap();
        let a: Cidr = "10.0.1.0/24".parse().unwrap();
        let b: Cidr = "10.0.1.128/25".parse().unwrap();
        let c: Cidr = "10.1.0.0/24".parse().unwrap();
        assert!(vpc.contains(&a) && vpc.contains(&b) && !vpc.contains(&c));
        assert!(a.overlaps(&b) && b.overlaps(&a) && !a.overlaps(&c));
    }

    #[test]
    fn semantic_checks_name_the_problem() {
        let ok = request(
            "10.0.0.0/16",
            &[("10.0.1.0/24", "us-east-1a"), ("10.0.2.0/24", "us-east-1b")],
        );
        assert_eq!(ok.validate(&zones()), Ok(()));
        let cases = [
            (
                request("10.0.0.0/16", &[("10.1.1.0/24", "us-east-1a")]),
                "not inside",
            ),
            (
                request(
                    "10.0.0.0/16",
                    &[("10.0.1.0/24", "us-east-1a"), ("10.0.1.0/25", "us-east-1b")],
                ),
                "overlaps subnet 0",
            ),
            (
                request("10.0.0.0/16", &[("10.0.1.0/24", "mars-1a")]),
                "does not exist",
            ),
            (
                request("10.0.0.0/16", &[("10.0.1.7/24", "us-east-1a")]),
                "host bits",
            ),
        ];
        for (req, why) in cases {
            let err = req.validate(&zones()).unwrap_err();
            assert!(err.contains(why), "{err} should say {why}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<VpcRequest>(
            r#"{"vpc":{"cidr":"10.0.0.0/16"},"subnets":[],"x":1}"#
        )
        .is_err());
    }
}
