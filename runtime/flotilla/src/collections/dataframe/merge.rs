//! How a query's partial aggregates merge, in the driver and in the combine tasks of a tree
//! ([`super::super::combine`]): expression by expression, and group by group.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Groups, Key, Moments};
use crate::{
    collections::combine::{self, Combine},
    driver::Runtime,
    error::Result,
};

/// Merges `part` into `total`, element by element (`total` grows to `part`'s length).
pub(crate) fn merge_moments(total: &mut Vec<Moments>, part: Vec<Moments>) {
    if total.len() < part.len() {
        total.resize(part.len(), Moments::default());
    }
    for (t, p) in total.iter_mut().zip(part) {
        *t = t.merge(p);
    }
}

/// Partials of several aggregates (`Vec<Moments>`, one per expression), merged position by
/// position: a dataframe's aggregates, and an array's whole-array reductions.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct MergeMoments;

inventory::submit! { combine::function::<MergeMoments>() }

impl Combine for MergeMoments {
    type Partial = Vec<Moments>;
    type Total = Vec<Moments>;
    const NAME: &'static str = "flotilla::collections::dataframe::merge_moments";

    fn add_partial(
        &self,
        _: &Runtime,
        total: &mut Vec<Moments>,
        _: usize,
        part: Vec<Moments>,
    ) -> Result<()> {
        merge_moments(total, part);
        Ok(())
    }

    fn add_total(&self, _: &Runtime, total: &mut Vec<Moments>, other: Vec<Moments>) -> Result<()> {
        merge_moments(total, other);
        Ok(())
    }
}

/// Partial aggregates per group, merged by key into groups in key order.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct MergeGroups;

inventory::submit! { combine::function::<MergeGroups>() }

impl Combine for MergeGroups {
    type Partial = Groups;
    type Total = BTreeMap<Vec<Key>, Vec<Moments>>;
    const NAME: &'static str = "flotilla::collections::dataframe::merge_groups";

    fn add_partial(
        &self,
        _: &Runtime,
        total: &mut Self::Total,
        _: usize,
        part: Groups,
    ) -> Result<()> {
        for (key, moments) in part {
            merge_moments(total.entry(key).or_default(), moments);
        }
        Ok(())
    }

    fn add_total(&self, rt: &Runtime, total: &mut Self::Total, other: Self::Total) -> Result<()> {
        self.add_partial(rt, total, 0, other.into_iter().collect())
    }
}
