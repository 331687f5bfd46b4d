//! The per-task defaults, decided in one place: how many slots and retries a task gets when its
//! caller does not say.
//!
//! The wire format leaves room for "not said" (`slots: 0`, `max_retries: -1`, or no options at
//! all); [`ResolvedOptions`] is what remains once those are replaced by the defaults. The head
//! resolves a task's options once, when it is submitted, and every `Dispatch` it sends carries
//! the resolved values, so workers can trust them. Convert with `From`: an
//! `Option<&flotilla_proto::v1::TaskOptions>` into [`ResolvedOptions`], and back into the wire
//! message.

use std::collections::HashMap;

/// Retries after a worker failure when the caller does not say.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// Task slots when the caller does not say.
pub const DEFAULT_SLOTS: u32 = 1;

/// The slots a task takes: 0 means "not said", hence [`DEFAULT_SLOTS`].
pub fn resolve_slots(requested: u32) -> u32 {
    if requested == 0 {
        DEFAULT_SLOTS
    } else {
        requested
    }
}

/// The retries a task gets after worker failures: a negative number means "not said", hence
/// [`DEFAULT_MAX_RETRIES`].
pub fn resolve_max_retries(requested: i32) -> u32 {
    u32::try_from(requested).unwrap_or(DEFAULT_MAX_RETRIES)
}

/// A task's options with every default applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedOptions {
    /// Task slots it takes while it runs; at least 1.
    pub slots: u32,
    /// Retries after a worker failure.
    pub max_retries: u32,
    /// Named custom resources it takes while it runs (e.g. "gpu" → 1).
    pub custom: HashMap<String, u64>,
    /// The caller's name for logs and metrics; empty means the task's own name (its function,
    /// its class's constructor or its method).
    pub name: String,
}

impl Default for ResolvedOptions {
    /// The options of a task whose caller said nothing (a plain `.remote()`).
    fn default() -> Self {
        ResolvedOptions {
            slots: DEFAULT_SLOTS,
            max_retries: DEFAULT_MAX_RETRIES,
            custom: HashMap::new(),
            name: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_proto::v1 as pb;

    use super::*;

    fn options(slots: u32, max_retries: i32) -> pb::TaskOptions {
        pb::TaskOptions {
            max_retries,
            resources: Some(pb::Resources {
                slots,
                custom: HashMap::new(),
            }),
            name: String::new(),
        }
    }

    #[test]
    fn zero_slots_mean_one() {
        assert_eq!(resolve_slots(0), 1);
        assert_eq!(ResolvedOptions::from(Some(&options(0, 2))).slots, 1);
    }

    #[test]
    fn negative_retries_mean_the_default() {
        assert_eq!(resolve_max_retries(-1), DEFAULT_MAX_RETRIES);
        assert_eq!(resolve_max_retries(i32::MIN), DEFAULT_MAX_RETRIES);
        assert_eq!(
            ResolvedOptions::from(Some(&options(1, -1))).max_retries,
            DEFAULT_MAX_RETRIES
        );
    }

    #[test]
    fn no_options_mean_every_default() {
        // Not the proto's zero values: those would mean "never retry".
        assert_eq!(ResolvedOptions::from(None), ResolvedOptions::default());
        assert_eq!(ResolvedOptions::default().slots, 1);
        assert_eq!(ResolvedOptions::default().max_retries, DEFAULT_MAX_RETRIES);
    }

    #[test]
    fn options_without_resources_take_one_slot() {
        let o = pb::TaskOptions {
            max_retries: 5,
            resources: None,
            name: "load".into(),
        };
        let resolved = ResolvedOptions::from(Some(&o));
        assert_eq!(
            resolved,
            ResolvedOptions {
                slots: 1,
                max_retries: 5,
                custom: HashMap::new(),
                name: "load".into(),
            }
        );
    }

    #[test]
    fn explicit_values_are_kept() {
        let mut o = options(4, 0);
        o.resources
            .as_mut()
            .expect("set above")
            .custom
            .insert("gpu".into(), 2);
        let resolved = ResolvedOptions::from(Some(&o));
        assert_eq!(resolved.slots, 4);
        assert_eq!(resolved.max_retries, 0, "0 retries means never retry");
        assert_eq!(resolved.custom.get("gpu"), Some(&2));
        assert_eq!(resolve_slots(7), 7);
        assert_eq!(resolve_max_retries(9), 9);
    }

    #[test]
    fn resolved_options_go_back_on_the_wire_unchanged() {
        let resolved = ResolvedOptions::from(Some(&options(0, -1)));
        let wire = pb::TaskOptions::from(&resolved);
        assert_eq!(wire.max_retries, DEFAULT_MAX_RETRIES as i32);
        assert_eq!(wire.resources.as_ref().map(|r| r.slots), Some(1));
        assert_eq!(ResolvedOptions::from(Some(&wire)), resolved);
    }
}
