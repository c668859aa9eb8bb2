//! Stripe's request encoding: `application/x-www-form-urlencoded` with bracket keys
//! (`metadata[payout_item_id]=pit_1`, `controller[stripe_dashboard][type]=express`).
//!
//! Keys stay flat as sent; endpoints pick the scalars they need and turn a bracketed family
//! into a JSON object with [`Form::nested`].

use serde_json::{Map, Value};

use crate::error::ApiError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    pub(crate) fn parse(raw: &[u8]) -> Form {
        Form {
            pairs: form_urlencoded::parse(raw).into_owned().collect(),
        }
    }

    /// The last value sent for `key` (Stripe takes the last one too).
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub(crate) fn required(&self, key: &str) -> Result<&str, ApiError> {
        match self.get(key) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::invalid(format!("Missing required param: {key}."), key).code("parameter_missing")),
        }
    }

    /// Refuses the first key that is neither in `exact` nor starts with one of `prefixes`
    /// (the `[` of a bracket family), as Stripe refuses unknown parameters.
    pub(crate) fn allow(&self, exact: &[&str], prefixes: &[&str]) -> Result<(), ApiError> {
        for (key, _) in &self.pairs {
            let known = exact.contains(&key.as_str()) || prefixes.iter().any(|p| key.starts_with(&format!("{p}[")));
            if !known {
                return Err(
                    ApiError::invalid(format!("Received unknown parameter: {key}"), key).code("parameter_unknown")
                );
            }
        }
        Ok(())
    }

    /// `prefix[a][b]=v` pairs as `{"a":{"b":"v"}}`; values stay strings, as Stripe sent them.
    pub(crate) fn nested(&self, prefix: &str) -> Map<String, Value> {
        let mut root = Map::new();
        for (key, value) in &self.pairs {
            let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix('[')) else {
                continue;
            };
            let Some(inner) = rest.strip_suffix(']') else { continue };
            let path: Vec<&str> = inner.split("][").collect();
            insert(&mut root, &path, value);
        }
        root
    }

    /// The values of an array parameter, in the order sent: `expand[]=a&expand[]=b` or
    /// `expand[0]=a&expand[1]=b` (either spelling Stripe's clients use).
    pub(crate) fn list(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('['))
                    .and_then(|rest| rest.strip_suffix(']'))
                    .is_some_and(|index| index.chars().all(|c| c.is_ascii_digit()))
            })
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Order-insensitive form, to tell whether a reused idempotency key carries the same request.
    pub(crate) fn canonical(&self) -> Vec<(String, String)> {
        let mut pairs = self.pairs.clone();
        pairs.sort();
        pairs
    }
}

fn insert(map: &mut Map<String, Value>, path: &[&str], value: &str) {
    match path {
        [] => {}
        [last] => {
            map.insert((*last).to_owned(), Value::String(value.to_owned()));
        }
        [head, rest @ ..] => {
            let child = map
                .entry((*head).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            if let Value::Object(child) = child {
                insert(child, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bracket_keys_nest_and_compare_order_insensitively() {
        let a = Form::parse(
            b"controller%5Bstripe_dashboard%5D%5Btype%5D=express&controller[fees][payer]=application&amount=5",
        );
        assert_eq!(
            Value::Object(a.nested("controller")),
            json!({"stripe_dashboard": {"type": "express"}, "fees": {"payer": "application"}})
        );
        let b = Form::parse(b"amount=5&controller[fees][payer]=application&controller[stripe_dashboard][type]=express");
        assert_eq!(a.canonical(), b.canonical());
        assert_ne!(a.canonical(), Form::parse(b"amount=6").canonical());
    }

    #[test]
    fn unknown_and_missing_parameters_name_the_param() {
        let form = Form::parse(b"amount=5&metadata[x]=1&bogus=2");
        let err = form.allow(&["amount"], &["metadata"]).err().map(|e| e.param);
        assert_eq!(err, Some(Some("bogus".to_owned())));
        let err = form.required("currency").err().map(|e| e.param);
        assert_eq!(err, Some(Some("currency".to_owned())));
    }

    #[test]
    fn array_parameters_take_either_spelling() {
        let form = Form::parse(b"expand[]=latest_charge&expand%5B1%5D=customer&expandx[]=no&expand[a]=no");
        assert_eq!(form.list("expand"), vec!["latest_charge", "customer"]);
        assert!(form.list("payment_method_types").is_empty());
    }
}
