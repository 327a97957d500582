//! How networks look in tables and detail views.

use vessel_api::{IngressPolicy, IngressRule, Network};

use crate::output::{finish, key_values, list_or_dash, or_dash, plain_table, yes_no};

/// `vessel network list`.
pub fn network_table(networks: &[Network]) -> String {
    let mut table = plain_table(Some(&[
        "NAME", "KIND", "BRIDGE", "SUBNET", "GATEWAY", "DHCP", "NAT", "INGRESS", "NICS",
    ]));
    for n in networks {
        table.add_row(vec![
            n.name.clone(),
            n.kind.as_str().to_string(),
            or_dash(n.bridge.as_deref()),
            or_dash(n.subnet.as_deref()),
            or_dash(n.gateway.as_deref()),
            yes_no(n.dhcp),
            or_dash(n.uplink.as_deref()),
            n.ingress_policy.as_str().to_string(),
            n.used_by.len().to_string(),
        ]);
    }
    finish(table)
}

/// `vessel network show`.
pub fn network_details(n: &Network) -> String {
    let join = |items: &[String]| list_or_dash(items, ", ");
    key_values(vec![
        ("Name", n.name.clone()),
        ("Project", n.project.clone()),
        ("Kind", n.kind.as_str().to_string()),
        ("Bridge", or_dash(n.bridge.as_deref())),
        ("Subnet", or_dash(n.subnet.as_deref())),
        ("Gateway", or_dash(n.gateway.as_deref())),
        ("Range", or_dash(n.range.as_deref())),
        ("DHCP", yes_no(n.dhcp)),
        ("DNS", join(&n.dns)),
        ("NAT uplink", or_dash(n.uplink.as_deref())),
        (
            "VNI",
            n.vni.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
        ),
        ("Peers", join(&n.peers)),
        ("MTU", n.mtu.to_string()),
        ("Ingress policy", n.ingress_policy.as_str().to_string()),
        (
            "Ingress rules",
            join(&n.ingress.iter().map(rule_text).collect::<Vec<_>>()),
        ),
        ("Used by", join(&n.used_by)),
    ])
}

/// A rule in the short form `parse_rule` reads: `tcp:80-443@10.0.0.0/8`.
pub(crate) fn rule_text(rule: &IngressRule) -> String {
    let mut text = rule.protocol.as_str().to_string();
    if let Some(ports) = &rule.ports {
        text.push(':');
        text.push_str(ports);
    }
    if let Some(source) = &rule.source {
        text.push('@');
        text.push_str(source);
    }
    text
}

/// `vessel network rule list`: the policy, then one rule a row.
pub fn rule_table(policy: IngressPolicy, rules: &[IngressRule]) -> String {
    let mut table = plain_table(Some(&["PROTOCOL", "PORTS", "SOURCE"]));
    for r in rules {
        table.add_row(vec![
            r.protocol.as_str().to_string(),
            or_dash(r.ports.as_deref()),
            or_dash(r.source.as_deref()),
        ]);
    }
    format!("ingress policy: {}\n{}", policy.as_str(), finish(table))
}
