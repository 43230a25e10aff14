//! The stores' own service host names, which every policy allows (on 443, over HTTPS): the
//! S3 and STS names of AWS (regional, dual-stack, FIPS, virtual-hosted buckets and access
//! points, China), R2's account endpoints and Google's storage and token services. Other
//! names under `amazonaws.com` are hosts anyone can rent (EC2 public names, load balancers,
//! API gateways, website endpoints) and are not allowed.

/// Google's storage and token hosts.
const GOOGLE: &[&str] = &[
    "storage.googleapis.com",
    "oauth2.googleapis.com",
    "sts.googleapis.com",
    "iamcredentials.googleapis.com",
];

/// Whether `label` is an AWS region name such as `us-east-1`, `us-gov-west-1` or
/// `ap-southeast-2`.
fn is_region(label: &str) -> bool {
    let parts: Vec<&str> = label.split('-').collect();
    (3..=4).contains(&parts.len())
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// Whether `label` names the S3 or STS service (`s3`, `s3-fips`, `s3-us-west-2`, `sts`…);
/// `Some(true)` for S3, which may follow a bucket or access point name.
fn service(label: &str) -> Option<bool> {
    match label {
        "s3" | "s3-fips" | "s3-external-1" | "s3-accesspoint" | "s3-accesspoint-fips" => Some(true),
        "sts" | "sts-fips" => Some(false),
        _ if label.strip_prefix("s3-").is_some_and(is_region) => Some(true),
        _ => None,
    }
}

/// Whether `host` (lowercase) is an S3 or STS endpoint of AWS.
fn is_aws(host: &str) -> bool {
    let Some(rest) = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))
    else {
        return false;
    };
    let labels: Vec<&str> = rest.split('.').collect();
    labels.iter().enumerate().any(|(i, l)| {
        let qualifiers_ok = labels[i + 1..]
            .iter()
            .all(|q| *q == "dualstack" || is_region(q));
        match service(l) {
            Some(s3) => {
                qualifiers_ok && (i == 0 || (s3 && labels[..i].iter().all(|b| !b.is_empty())))
            }
            None => false,
        }
    })
}

/// Whether `host` (lowercase) is one of R2's S3 endpoints (`<account>.r2.cloudflarestorage.com`,
/// with a jurisdiction or a virtual-hosted bucket in front).
fn is_r2(host: &str) -> bool {
    host.strip_suffix(".r2.cloudflarestorage.com")
        .is_some_and(|rest| !rest.is_empty() && rest.split('.').all(|l| !l.is_empty()))
}

/// Whether `host` (lowercase, no port) is a store's own service host.
pub fn is_service_host(host: &str) -> bool {
    is_aws(host) || is_r2(host) || GOOGLE.contains(&host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stores_service_names_are_allowed_and_rentable_names_are_not() {
        for ok in [
            "s3.amazonaws.com",
            "s3.eu-west-1.amazonaws.com",
            "bucket.s3.amazonaws.com",
            "my.dotted.bucket.s3.us-east-2.amazonaws.com",
            "s3.dualstack.eu-central-1.amazonaws.com",
            "s3-fips.us-gov-west-1.amazonaws.com",
            "s3-us-west-2.amazonaws.com",
            "s3-external-1.amazonaws.com",
            "ap-123456789012.s3-accesspoint.eu-west-1.amazonaws.com",
            "s3.cn-north-1.amazonaws.com.cn",
            "sts.amazonaws.com",
            "sts.us-east-1.amazonaws.com",
            "sts-fips.us-east-2.amazonaws.com",
            "0123abcd.r2.cloudflarestorage.com",
            "0123abcd.eu.r2.cloudflarestorage.com",
            "storage.googleapis.com",
            "oauth2.googleapis.com",
            "sts.googleapis.com",
        ] {
            assert!(is_service_host(ok), "{ok}");
        }
        for rented in [
            "ec2-52-1-2-3.compute-1.amazonaws.com",
            "ec2-52-1-2-3.us-west-2.compute.amazonaws.com",
            "s3-lb-123456.us-east-1.elb.amazonaws.com",
            "abc123.execute-api.us-east-1.amazonaws.com",
            "bucket.s3-website-us-east-1.amazonaws.com",
            "bucket.s3-website.eu-west-1.amazonaws.com",
            "x.sts.amazonaws.com",
            "s3.amazonaws.com.evil.example",
            "evil.amazonaws.com",
            "amazonaws.com",
            "r2.cloudflarestorage.com",
            "evil.googleapis.com",
            "storage.googleapis.com.evil.example",
        ] {
            assert!(!is_service_host(rented), "{rented}");
        }
    }
}
