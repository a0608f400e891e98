//! The eight Tencent Cloud Chat regions and their REST API domains (reference: "Calling
//! convention").

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Region {
    China,
    Singapore,
    Seoul,
    Frankfurt,
    SiliconValley,
    Jakarta,
    Tokyo,
    Mumbai,
}

impl Region {
    pub const ALL: [Region; 8] = [
        Region::China,
        Region::Singapore,
        Region::Seoul,
        Region::Frankfurt,
        Region::SiliconValley,
        Region::Jakarta,
        Region::Tokyo,
        Region::Mumbai,
    ];

    /// The config spelling: `china`, `singapore`, `seoul`, `frankfurt`, `silicon_valley`,
    /// `jakarta`, `tokyo`, `mumbai`.
    pub fn name(self) -> &'static str {
        match self {
            Region::China => "china",
            Region::Singapore => "singapore",
            Region::Seoul => "seoul",
            Region::Frankfurt => "frankfurt",
            Region::SiliconValley => "silicon_valley",
            Region::Jakarta => "jakarta",
            Region::Tokyo => "tokyo",
            Region::Mumbai => "mumbai",
        }
    }

    pub fn from_name(name: &str) -> Option<Region> {
        Region::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The primary REST API domain.
    pub fn domain(self) -> &'static str {
        match self {
            Region::China => "console.tim.qq.com",
            Region::Singapore => "adminapisgp.im.qcloud.com",
            Region::Seoul => "adminapikr.im.qcloud.com",
            Region::Frankfurt => "adminapiger.im.qcloud.com",
            Region::SiliconValley => "adminapiusa.im.qcloud.com",
            Region::Jakarta => "adminapiidn.im.qcloud.com",
            Region::Tokyo => "adminapijpn.im.qcloud.com",
            Region::Mumbai => "adminapiind.im.qcloud.com",
        }
    }

    /// The backup domain Tencent documents for the region (for when a carrier hijacks the
    /// primary's DNS); Tokyo has none documented.
    pub fn backup_domain(self) -> Option<&'static str> {
        Some(match self {
            Region::China => "adminapi.my-imcloud.com",
            Region::Singapore => "adminapisgp.my-imcloud.com",
            Region::Seoul => "adminapikr.my-imcloud.com",
            Region::Frankfurt => "adminapiger.my-imcloud.com",
            Region::SiliconValley => "adminapiusa.my-imcloud.com",
            Region::Jakarta => "adminapiidn.my-imcloud.com",
            Region::Tokyo => return None,
            Region::Mumbai => "adminapiind.my-imcloud.com",
        })
    }

    /// `https://{domain}`, the base URL API paths are joined to.
    pub fn base_url(self) -> url::Url {
        url::Url::parse(&format!("https://{}/", self.domain()))
            .expect("region domains are valid hosts")
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_domains_are_https() {
        for r in Region::ALL {
            assert_eq!(Region::from_name(r.name()), Some(r));
            assert_eq!(r.base_url().scheme(), "https");
            assert!(
                r.backup_domain()
                    .is_none_or(|d| d.ends_with("my-imcloud.com"))
            );
        }
        let names: Vec<&str> = Region::ALL.iter().map(|r| r.name()).collect();
        // SPEC's list, in its order.
        assert_eq!(
            names.join(" | "),
            "china | singapore | seoul | frankfurt | silicon_valley | jakarta | tokyo | mumbai"
        );
        assert_eq!(Region::from_name("tokyo"), Some(Region::Tokyo));
        assert_eq!(Region::Tokyo.domain(), "adminapijpn.im.qcloud.com");
        assert_eq!(Region::Tokyo.backup_domain(), None);
        assert_eq!(Region::Mumbai.domain(), "adminapiind.im.qcloud.com");
        assert_eq!(
            Region::Mumbai.backup_domain(),
            Some("adminapiind.my-imcloud.com")
        );
        assert_eq!(Region::from_name("Singapore"), None);
        assert_eq!(Region::Singapore.domain(), "adminapisgp.im.qcloud.com");
        assert_eq!(Region::China.domain(), "console.tim.qq.com");
    }
}
