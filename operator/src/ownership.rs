//! Which existing objects a route may change. A route's dispatcher objects have
//! fixed names (`<route>-dispatcher`), so an object of that name may already exist
//! and belong to someone else. Applying over it (server-side apply with force)
//! would take it over, and deleting the route would then garbage-collect it. So an
//! object is changed only when it is absent or controlled by this very route (a
//! controller ownerReference with the route's uid); anything else is a conflict the
//! route reports, and the object is left alone.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// An object of a dispatcher object's name that this route does not control.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// `Kind/name` of its controller, if it has one.
    pub controller: Option<String>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let owner = match &self.controller {
            Some(c) => format!("it is controlled by {c}"),
            None => "it has no controller".to_string(),
        };
        write!(
            f,
            "{} {}/{} exists and was not created for this route ({owner}); Fanout leaves it \
             alone and runs no dispatchers for the route until it is deleted or the route renamed",
            self.kind, self.namespace, self.name
        )
    }
}

/// `Ok` when the route whose uid is `route_uid` may apply an object over `existing`
/// (its metadata, `None` when there is no such object).
pub fn check(
    kind: &'static str,
    namespace: &str,
    name: &str,
    existing: Option<&ObjectMeta>,
    route_uid: &str,
) -> Result<(), Conflict> {
    let Some(meta) = existing else {
        return Ok(());
    };
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match controller {
        Some(c) if c.uid == route_uid && c.kind == "FanOutRoute" => Ok(()),
        other => Err(Conflict {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            controller: other.map(|c| format!("{}/{}", c.kind, c.name)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn meta(owners: &[(&str, &str, bool)]) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(
                owners
                    .iter()
                    .map(|(kind, uid, controller)| OwnerReference {
                        api_version: "fanout.dev/v1alpha1".into(),
                        kind: kind.to_string(),
                        name: "orders".into(),
                        uid: uid.to_string(),
                        controller: Some(*controller),
                        block_owner_deletion: None,
                    })
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn absent_or_controlled_by_this_route_may_be_applied() {
        assert!(check("Deployment", "shop", "orders-dispatcher", None, "uid-1").is_ok());
        let ours = meta(&[("FanOutRoute", "uid-1", true)]);
        assert!(
            check(
                "Deployment",
                "shop",
                "orders-dispatcher",
                Some(&ours),
                "uid-1"
            )
            .is_ok()
        );
    }

    #[test]
    fn anything_else_is_a_conflict_naming_the_object() {
        let cases = [
            (meta(&[]), None),
            // An earlier route of the same name (deleted with --cascade=orphan, say).
            (
                meta(&[("FanOutRoute", "uid-0", true)]),
                Some("FanOutRoute/orders"),
            ),
            // This route only as a plain owner, someone else in control.
            (
                meta(&[("FanOutRoute", "uid-1", false), ("Team", "uid-9", true)]),
                Some("Team/orders"),
            ),
        ];
        for (existing, controller) in cases {
            let c = check(
                "Deployment",
                "shop",
                "orders-dispatcher",
                Some(&existing),
                "uid-1",
            )
            .unwrap_err();
            assert_eq!(c.controller.as_deref(), controller);
            assert!(
                c.to_string()
                    .starts_with("Deployment shop/orders-dispatcher exists"),
                "{c}"
            );
        }
    }
}
