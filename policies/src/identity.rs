//! Who a request is: the identity taken from a verified ID token, session or bearer JWT, and
//! uniform access to its claims for rules and headers.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A verified identity. Built only from claims whose signature was checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(rename = "s")]
    pub sub: String,
    /// `preferred_username`.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "g", default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Other claims the policy's rules or custom headers read (nothing else is kept).
    #[serde(rename = "c", default, skip_serializing_if = "Map::is_empty")]
    pub claims: Map<String, Value>,
    /// The token the identity came from (ID token or bearer JWT), for `X-authentik-jwt`.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub raw_token: Option<String>,
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(scalar).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Identity {
    /// From a verified claim set. `keep` names extra claims to retain.
    pub fn from_claims(claims: &Map<String, Value>, keep: &BTreeSet<String>) -> Option<Self> {
        let sub = claims.get("sub")?.as_str()?.to_owned();
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        let extra = keep
            .iter()
            .filter_map(|k| claims.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        Some(Self {
            sub,
            username: text("preferred_username"),
            email: text("email"),
            name: text("name"),
            groups: string_list(claims.get("groups")),
            claims: extra,
            raw_token: None,
        })
    }

    /// The values of a claim as strings (arrays flattened, scalars as one value).
    pub fn claim_values(&self, claim: &str) -> Vec<String> {
        match claim {
            "sub" => vec![self.sub.clone()],
            "preferred_username" => self.username.clone().into_iter().collect(),
            "email" => self.email.clone().into_iter().collect(),
            "name" => self.name.clone().into_iter().collect(),
            "groups" => self.groups.clone(),
            other => match self.claims.get(other) {
                Some(Value::Array(items)) => items.iter().filter_map(scalar).collect(),
                Some(v) => scalar(v).into_iter().collect(),
                None => Vec::new(),
            },
        }
    }
}
