//! Authorization rules over groups, emails, email domains and claim values.

use crate::identity::Identity;
use crate::policy::Rules;

/// Why a verified identity is not allowed (shown on the 403 page, so no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
            && self.emails.is_empty()
            && self.email_domains.is_empty()
            && self.claims.is_empty()
    }

    /// Every non-empty category must match; within a category one match suffices. Empty rules
    /// allow any authenticated identity.
    pub fn evaluate(&self, id: &Identity) -> Result<(), Denied> {
        if !self.groups.is_empty() && !id.groups.iter().any(|g| self.groups.contains(g)) {
            return Err(Denied(format!(
                "membership in one of the groups: {}",
                self.groups.join(", ")
            )));
        }
        let email = id.email.as_deref().map(str::to_ascii_lowercase);
        if !self.emails.is_empty() && !email.as_ref().is_some_and(|e| self.emails.contains(e)) {
            return Err(Denied("an allowed email address".to_owned()));
        }
        if !self.email_domains.is_empty() {
            let domain = email
                .as_deref()
                .and_then(|e| e.rsplit_once('@'))
                .map(|(_, d)| d);
            if !domain.is_some_and(|d| self.email_domains.iter().any(|a| a == d)) {
                return Err(Denied(format!(
                    "an email address at {}",
                    self.email_domains.join(", ")
                )));
            }
        }
        for (claim, allowed) in &self.claims {
            let values = id.claim_values(claim);
            if !values.iter().any(|v| allowed.contains(v)) {
                return Err(Denied(format!(
                    "claim {claim} with one of: {}",
                    allowed.join(", ")
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(groups: &[&str], email: &str, dept: Option<&str>) -> Identity {
        let mut claims = serde_json::Map::new();
        if let Some(d) = dept {
            claims.insert("department".into(), serde_json::Value::String(d.into()));
        }
        Identity {
            sub: "s".into(),
            email: Some(email.into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            claims,
            ..Identity::default()
        }
    }

    #[test]
    fn empty_rules_allow_everyone() {
        assert!(Rules::default().evaluate(&id(&[], "x@y.z", None)).is_ok());
    }

    #[test]
    fn categories_combine_with_and_values_with_or() {
        let rules = Rules {
            groups: vec!["admins".into(), "ops".into()],
            email_domains: vec!["example.test".into()],
            claims: vec![("department".into(), vec!["eng".into(), "it".into()])],
            ..Rules::default()
        };
        assert!(
            rules
                .evaluate(&id(&["users", "ops"], "a@Example.TEST", Some("it")))
                .is_ok()
        );
        assert!(
            rules
                .evaluate(&id(&["users"], "a@example.test", Some("it")))
                .is_err()
        );
        assert!(
            rules
                .evaluate(&id(&["admins"], "a@evil.test", Some("it")))
                .is_err()
        );
        assert!(
            rules
                .evaluate(&id(&["admins"], "a@example.test.evil", Some("it")))
                .is_err()
        );
        assert!(
            rules
                .evaluate(&id(&["admins"], "a@example.test", Some("sales")))
                .is_err()
        );
        assert!(
            rules
                .evaluate(&id(&["admins"], "a@example.test", None))
                .is_err()
        );
    }

    #[test]
    fn exact_emails() {
        let rules = Rules {
            emails: vec!["bob@example.test".into()],
            ..Rules::default()
        };
        assert!(rules.evaluate(&id(&[], "BOB@example.test", None)).is_ok());
        assert!(
            rules
                .evaluate(&id(&[], "alice@example.test", None))
                .is_err()
        );
    }
}
