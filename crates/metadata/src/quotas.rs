//! Client quotas as Kafka models them: an entity is a set of (entity type, name) pairs, a name
//! `None` standing for the type's default (`<default>` in Kafka's tools), and each entity holds
//! quota values by key. The image keeps them ([`ClientQuotas`]); `control::quotas` decides
//! AlterClientQuotas; [`describe`] answers DescribeClientQuotas filters; [`resolve`] finds the
//! quota that applies to a (user, client id), in Kafka's order.

use std::collections::BTreeMap;

pub const USER: &str = "user";
pub const CLIENT_ID: &str = "client-id";
pub const IP: &str = "ip";

pub const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
pub const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";
pub const REQUEST_PERCENTAGE: &str = "request_percentage";
pub const CONTROLLER_MUTATION_RATE: &str = "controller_mutation_rate";

/// The keys a user or client-id entity may hold, and whether a value must be a whole number
/// (Kafka defines the byte rates as LONG, the others as DOUBLE).
pub const CLIENT_QUOTA_KEYS: &[(&str, bool)] = &[
    (PRODUCER_BYTE_RATE, true),
    (CONSUMER_BYTE_RATE, true),
    (REQUEST_PERCENTAGE, false),
    (CONTROLLER_MUTATION_RATE, false),
];

/// Entity type → name (`None`: the type's default). Ordered, so it can key a map.
pub type QuotaEntity = BTreeMap<String, Option<String>>;

/// A quota value. Decisions refuse NaN and infinities, so equality is total.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct QuotaValue(pub f64);

impl Eq for QuotaValue {}

/// Every entity with at least one quota, and its quotas by key.
pub type ClientQuotas = BTreeMap<QuotaEntity, BTreeMap<String, QuotaValue>>;

/// How a DescribeClientQuotas component matches an entity's name for its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuotaMatch {
    /// Kafka's match type 0: this name.
    Exact(String),
    /// Match type 1: the type's default entity.
    Default,
    /// Match type 2: any entity of this type, default or named.
    Any,
}

/// The entities of `quotas` that a DescribeClientQuotas filter selects: each component's type
/// must be in the entity and match; `strict` also excludes entities with other types.
/// Components must name distinct types (the caller refuses a filter that repeats one).
pub fn describe<'a>(
    quotas: &'a ClientQuotas,
    components: &'a [(String, QuotaMatch)],
    strict: bool,
) -> impl Iterator<Item = (&'a QuotaEntity, &'a BTreeMap<String, QuotaValue>)> + 'a {
    quotas.iter().filter(move |(entity, _)| {
        let matched = components.iter().all(|(entity_type, how)| match entity.get(entity_type) {
            None => false,
            Some(name) => match how {
                QuotaMatch::Exact(want) => name.as_deref() == Some(want.as_str()),
                QuotaMatch::Default => name.is_none(),
                QuotaMatch::Any => true,
            },
        });
        matched && (!strict || entity.len() == components.len())
    })
}

/// The quota a client is held to for `key`, and the entity it was found on: Kafka's order for a
/// (user, client id) is user+client-id, user+default client-id, user, default user+client-id,
/// default user+default client-id, default user, client-id, default client-id. The first
/// entity in that order that sets `key` wins.
pub fn resolve<'a>(
    quotas: &'a ClientQuotas,
    user: &str,
    client_id: &str,
    key: &str,
) -> Option<(&'a QuotaEntity, f64)> {
    let both = |u: Option<&str>, c: Option<&str>| {
        QuotaEntity::from([
            (USER.to_string(), u.map(str::to_string)),
            (CLIENT_ID.to_string(), c.map(str::to_string)),
        ])
    };
    let one =
        |t: &str, n: Option<&str>| QuotaEntity::from([(t.to_string(), n.map(str::to_string))]);
    let order = [
        both(Some(user), Some(client_id)),
        both(Some(user), None),
        one(USER, Some(user)),
        both(None, Some(client_id)),
        both(None, None),
        one(USER, None),
        one(CLIENT_ID, Some(client_id)),
        one(CLIENT_ID, None),
    ];
    order.iter().find_map(|entity| {
        let (found, values) = quotas.get_key_value(entity)?;
        values.get(key).map(|v| (found, v.0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(parts: &[(&str, Option<&str>)]) -> QuotaEntity {
        parts.iter().map(|(t, n)| (t.to_string(), n.map(str::to_string))).collect()
    }

    type Entity<'a> = &'a [(&'a str, Option<&'a str>)];

    fn with(entries: &[(Entity<'_>, f64)]) -> ClientQuotas {
        entries
            .iter()
            .map(|(e, v)| {
                (entity(e), BTreeMap::from([(PRODUCER_BYTE_RATE.to_string(), QuotaValue(*v))]))
            })
            .collect()
    }

    #[test]
    fn resolution_follows_kafkas_order() {
        let levels: [&[(&str, Option<&str>)]; 8] = [
            &[(USER, Some("u")), (CLIENT_ID, Some("c"))],
            &[(USER, Some("u")), (CLIENT_ID, None)],
            &[(USER, Some("u"))],
            &[(USER, None), (CLIENT_ID, Some("c"))],
            &[(USER, None), (CLIENT_ID, None)],
            &[(USER, None)],
            &[(CLIENT_ID, Some("c"))],
            &[(CLIENT_ID, None)],
        ];
        // Remove the most specific level one at a time: the next one answers.
        for first in 0..levels.len() {
            let entries: Vec<_> =
                levels[first..].iter().enumerate().map(|(i, e)| (*e, (first + i) as f64)).collect();
            let quotas = with(&entries);
            let (found, value) = resolve(&quotas, "u", "c", PRODUCER_BYTE_RATE).unwrap();
            assert_eq!(value, first as f64);
            assert_eq!(*found, entity(levels[first]));
        }
        let quotas = with(&[(&[(CLIENT_ID, Some("other"))], 1.0)]);
        assert_eq!(resolve(&quotas, "u", "c", PRODUCER_BYTE_RATE), None);
        assert_eq!(resolve(&quotas, "u", "other", CONSUMER_BYTE_RATE), None, "another key");
    }

    #[test]
    fn describe_filters_match_exact_default_and_any_and_strict_excludes_wider_entities() {
        let quotas = with(&[
            (&[(CLIENT_ID, Some("a"))], 1.0),
            (&[(CLIENT_ID, None)], 2.0),
            (&[(USER, None), (CLIENT_ID, Some("a"))], 3.0),
            (&[(USER, Some("u"))], 4.0),
        ]);
        let values = |components: &[(String, QuotaMatch)], strict| {
            describe(&quotas, components, strict)
                .map(|(_, v)| v[PRODUCER_BYTE_RATE].0 as i32)
                .collect::<Vec<_>>()
        };
        let client = |m| vec![(CLIENT_ID.to_string(), m)];
        assert_eq!(values(&client(QuotaMatch::Exact("a".into())), false), [1, 3]);
        assert_eq!(values(&client(QuotaMatch::Exact("a".into())), true), [1]);
        assert_eq!(values(&client(QuotaMatch::Default), false), [2]);
        assert_eq!(values(&client(QuotaMatch::Any), true), [2, 1]);
        assert_eq!(values(&[], false), [2, 1, 3, 4], "no component: every entity");
        assert_eq!(values(&[], true), Vec::<i32>::new());
        let user_default = vec![(USER.to_string(), QuotaMatch::Default)];
        assert_eq!(values(&user_default, false), [3]);
    }
}
