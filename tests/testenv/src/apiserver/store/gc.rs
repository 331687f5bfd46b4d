//! Owner-reference garbage collection: orphaning dependents, cascading deletions in the
//! background and in the foreground, and the end of terminating namespaces.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{has_finalizers, meta, meta_mut, meta_str, DeleteOptions, Store};
use crate::apiserver::resources::GroupResource;

impl Store {
    /// Whether some object names `uid` among its owners.
    pub(super) fn has_dependents(&self, uid: &str) -> bool {
        self.objects
            .values()
            .flat_map(|b| b.values())
            .any(|s| owner_uids(&s.object).contains(uid))
    }

    /// Removes the owner references to `uid` (the `Orphan` propagation policy).
    pub(super) fn orphan_dependents(&mut self, uid: &str) {
        let dependents: Vec<(GroupResource, String, String)> = self
            .objects
            .iter()
            .flat_map(|(key, bucket)| bucket.iter().map(move |((ns, n), s)| (key, ns, n, s)))
            .filter(|(_, _, _, s)| owner_uids(&s.object).contains(uid))
            .map(|(key, ns, n, _)| (key.clone(), ns.clone(), n.clone()))
            .collect();
        for (key, ns, n) in dependents {
            let Some(old) = self.stored(&key, &ns, &n).map(|s| s.object.clone()) else {
                continue;
            };
            let mut object = old.clone();
            if let Some(Value::Array(refs)) = meta_mut(&mut object).get_mut("ownerReferences") {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
            }
            self.rewrite(&key, &ns, &n, &mut object, Some(old));
        }
    }

    /// The garbage collector, run to a fixed point after every change that can orphan objects:
    /// deletes objects whose owners are all gone, finishes foreground deletions and
    /// terminating namespaces.
    pub(super) fn collect_garbage(&mut self) {
        loop {
            let uids: BTreeSet<String> = self
                .objects
                .values()
                .flat_map(|b| b.values())
                .filter_map(|s| meta_str(&s.object, "uid").map(str::to_owned))
                .collect();
            let mut work: Vec<(GroupResource, String, String, Action)> = Vec::new();
            let terminating_namespaces: BTreeSet<String> = self
                .objects
                .get(&GroupResource {
                    group: String::new(),
                    plural: "namespaces".to_owned(),
                })
                .into_iter()
                .flat_map(|b| b.values())
                .filter(|s| meta(&s.object).get("deletionTimestamp").is_some())
                .filter_map(|s| meta_str(&s.object, "name").map(str::to_owned))
                .collect();
            let mut occupied: BTreeSet<String> = BTreeSet::new();
            for (key, bucket) in &self.objects {
                for ((ns, name), stored) in bucket {
                    let object = &stored.object;
                    let terminating = meta(object).get("deletionTimestamp").is_some();
                    if !ns.is_empty() {
                        occupied.insert(ns.clone());
                    }
                    let owners = owner_uids(object);
                    let orphaned = !owners.is_empty() && owners.iter().all(|o| !uids.contains(o));
                    if !terminating && (terminating_namespaces.contains(ns) || orphaned) {
                        work.push((key.clone(), ns.clone(), name.clone(), Action::Delete));
                    } else if terminating && has_finalizer(object, "foregroundDeletion") {
                        let uid = meta_str(object, "uid").unwrap_or_default();
                        let dependents = self.dependents_of(uid);
                        if dependents.is_empty() {
                            work.push((
                                key.clone(),
                                ns.clone(),
                                name.clone(),
                                Action::DropForegroundFinalizer,
                            ));
                        } else {
                            for (dk, dns, dn, dependent_terminating) in dependents {
                                if !dependent_terminating {
                                    work.push((dk, dns, dn, Action::Delete));
                                }
                            }
                        }
                    }
                }
            }
            for ns in &terminating_namespaces {
                if !occupied.contains(ns) {
                    work.push((
                        GroupResource {
                            group: String::new(),
                            plural: "namespaces".to_owned(),
                        },
                        String::new(),
                        ns.clone(),
                        Action::RemoveNamespace,
                    ));
                }
            }
            if work.is_empty() {
                return;
            }
            for (key, ns, name, action) in work {
                match action {
                    Action::Delete => {
                        if let Some(resource) = self.registry.any_version(&key).cloned() {
                            // The object may already be gone through an earlier item of this round.
                            let _ = self.delete(&resource, &ns, &name, &DeleteOptions::default());
                        }
                    }
                    Action::DropForegroundFinalizer => {
                        self.drop_finalizer(&key, &ns, &name, "foregroundDeletion")
                    }
                    Action::RemoveNamespace => {
                        self.remove(&key, &ns, &name);
                    }
                }
            }
        }
    }

    /// The objects owned by `uid`: key, namespace, name and whether they are terminating.
    fn dependents_of(&self, uid: &str) -> Vec<(GroupResource, String, String, bool)> {
        self.objects
            .iter()
            .flat_map(|(key, bucket)| {
                bucket
                    .iter()
                    .filter(|(_, s)| owner_uids(&s.object).contains(uid))
                    .map(move |((ns, n), s)| {
                        (
                            key.clone(),
                            ns.clone(),
                            n.clone(),
                            meta(&s.object).get("deletionTimestamp").is_some(),
                        )
                    })
            })
            .collect()
    }

    /// Takes `finalizer` off an object; the object goes when that was its last finalizer.
    fn drop_finalizer(
        &mut self,
        key: &GroupResource,
        namespace: &str,
        name: &str,
        finalizer: &str,
    ) {
        let Some(stored) = self.stored(key, namespace, name).cloned() else {
            return;
        };
        let mut object = stored.object.clone();
        if let Some(Value::Array(finalizers)) = meta_mut(&mut object).get_mut("finalizers") {
            finalizers.retain(|f| f.as_str() != Some(finalizer));
        }
        if has_finalizers(&object) {
            self.rewrite(key, namespace, name, &mut object, Some(stored.object));
        } else {
            self.remove(key, namespace, name);
        }
    }
}

/// A step of the garbage collector.
enum Action {
    Delete,
    DropForegroundFinalizer,
    RemoveNamespace,
}

/// The uids of an object's owners.
fn owner_uids(object: &Value) -> BTreeSet<String> {
    meta(object)
        .get("ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// Whether an object carries `finalizer`.
fn has_finalizer(object: &Value, finalizer: &str) -> bool {
    meta(object)
        .get("finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x.as_str() == Some(finalizer)))
}

/// Adds `finalizer` to an object; false when it was there already.
pub(super) fn add_finalizer(object: &mut Value, finalizer: &str) -> bool {
    if has_finalizer(object, finalizer) {
        return false;
    }
    let metadata = meta_mut(object);
    match metadata.get_mut("finalizers") {
        Some(Value::Array(list)) => list.push(Value::String(finalizer.to_owned())),
        _ => {
            metadata.insert("finalizers".to_owned(), json!([finalizer]));
        }
    }
    true
}
