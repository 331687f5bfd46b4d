//! Worker leases (Ray's model for plain tasks): a driver holds one slot of a worker for tasks of
//! one shape and pushes them there itself, so an awaited task crosses two hops instead of four.
//! The slot is taken as a running task takes it, so placement, demand, drains and scale-down all
//! see the worker busy, until the driver gives the lease back or the head revokes it: a drain of
//! the worker, the session's job cancelled (its tasks there are stopped as well), or tasks of
//! other sessions waiting with no free slot. A lost worker or a closed session frees its leases.

use std::collections::HashMap;

use flotilla_proto::v1 as pb;

use super::{workers::WorkerState, Output, Scheduler};
use crate::{
    ids::{ObjectId, SessionId, WorkerId},
    options::resolve_slots,
};

/// A slot a session holds on a worker.
#[derive(Debug)]
pub(super) struct Lease {
    pub(super) session: SessionId,
    pub(super) worker: WorkerId,
    slots: u32,
    custom: HashMap<String, u64>,
    /// The session was told to give it back.
    revoked: bool,
    /// A task running on it waits in `get`: its slots are lent to other tasks meanwhile.
    lent_for: Option<ObjectId>,
}

/// The leases out, by id.
#[derive(Debug, Default)]
pub(super) struct Leases {
    pub(super) by_id: HashMap<u64, Lease>,
    next: u64,
}

impl Leases {
    /// Slots the leases out on each worker hold.
    pub(super) fn slots_by_worker(&self) -> HashMap<WorkerId, u64> {
        let mut by = HashMap::new();
        for l in self.by_id.values() {
            *by.entry(l.worker).or_default() += u64::from(l.slots);
        }
        by
    }
}

impl Scheduler {
    /// Grants `session` a lease on a slot for tasks of the requested shape, on the active worker
    /// with the most free slots that has the function; or says why not. A lease never jumps the
    /// head's queue: while tasks wait there, none is granted and the driver goes through it.
    pub(super) fn grant_lease(&mut self, session: SessionId, request: pb::LeaseRequest) {
        let resources = request.resources.unwrap_or_default();
        let slots = resolve_slots(resources.slots);
        let custom = resources.custom;
        let refuse = |why: &str| pb::LeaseGranted {
            request: request.request,
            lease: 0,
            location: None,
            error: why.to_string(),
        };
        let grant = match self.sessions.get(&session) {
            None => refuse("no such session"),
            Some(s) if s.cancelled => refuse("the session's job was cancelled"),
            Some(s) if s.worker.is_some() => refuse("tasks submitted by tasks go through the head"),
            Some(_) if !self.queue.is_empty() => refuse("tasks are waiting at the head"),
            Some(_) => {
                let best = self
                    .workers
                    .iter()
                    .filter(|(_, w)| {
                        w.state == WorkerState::Active
                            && w.info.functions.contains_key(&request.function)
                            && w.busy_slots + slots <= w.info.slots + w.lent_slots
                            && custom
                                .iter()
                                .all(|(k, v)| w.custom_free.get(k).copied().unwrap_or(0) >= *v)
                    })
                    .max_by_key(|(id, w)| {
                        (
                            w.info.slots + w.lent_slots - w.busy_slots,
                            std::cmp::Reverse(**id),
                        )
                    })
                    .map(|(id, _)| *id);
                match best {
                    None => refuse("no worker has a free slot of that shape"),
                    Some(worker) => {
                        let w = self.workers.get_mut(&worker).expect("picked above");
                        w.busy_slots += slots;
                        w.leases += 1;
                        for (k, v) in &custom {
                            if let Some(free) = w.custom_free.get_mut(k) {
                                *free = free.saturating_sub(*v);
                            }
                        }
                        self.leases.next += 1;
                        let lease = self.leases.next;
                        let location = pb::ActorLocation {
                            worker: worker.0,
                            address: w.info.address.clone(),
                            node: w.info.node.clone(),
                            incarnation: 0,
                        };
                        self.leases.by_id.insert(
                            lease,
                            Lease {
                                session,
                                worker,
                                slots,
                                custom,
                                revoked: false,
                                lent_for: None,
                            },
                        );
                        pb::LeaseGranted {
                            request: request.request,
                            lease,
                            location: Some(location),
                            error: String::new(),
                        }
                    }
                }
            }
        };
        self.emit(Output::Lease { session, grant });
    }

    /// `session` gives a lease back: its slot is free again.
    pub(super) fn lease_returned(&mut self, session: SessionId, lease: u64) {
        if self
            .leases
            .by_id
            .get(&lease)
            .is_some_and(|l| l.session == session)
        {
            self.free_lease(lease);
            self.check_drains();
            self.place_tasks();
        }
    }

    /// Drops a lease and gives back what it held on its worker (if the worker is still there).
    pub(super) fn free_lease(&mut self, lease: u64) {
        let Some(l) = self.leases.by_id.remove(&lease) else {
            return;
        };
        if let Some(w) = self.workers.get_mut(&l.worker) {
            w.busy_slots = w.busy_slots.saturating_sub(l.slots);
            w.leases = w.leases.saturating_sub(1);
            if l.lent_for.is_some() {
                w.lent_slots = w.lent_slots.saturating_sub(l.slots);
            }
            for (k, v) in &l.custom {
                *w.custom_free.entry(k.clone()).or_default() += v;
            }
        }
    }

    /// Tells the holders of the leases `which` picks to give them back (once each).
    pub(super) fn revoke_leases(&mut self, which: impl Fn(&Lease) -> bool) {
        let mut revoked: Vec<(u64, SessionId)> = self
            .leases
            .by_id
            .iter_mut()
            .filter(|(_, l)| !l.revoked && which(l))
            .map(|(id, l)| {
                l.revoked = true;
                (*id, l.session)
            })
            .collect();
        revoked.sort();
        for (lease, session) in revoked {
            self.emit(Output::LeaseRevoked { session, lease });
        }
    }

    /// Frees the leases `which` picks at once (their worker or session went away, or a drain's
    /// deadline passed), telling their sessions.
    pub(super) fn end_leases(&mut self, which: impl Fn(&Lease) -> bool) {
        let mut ended: Vec<(u64, SessionId)> = self
            .leases
            .by_id
            .iter()
            .filter(|(_, l)| which(l))
            .map(|(id, l)| (*id, l.session))
            .collect();
        ended.sort();
        for (lease, session) in ended {
            self.free_lease(lease);
            if self.sessions.contains_key(&session) {
                self.emit(Output::LeaseRevoked { session, lease });
            }
        }
    }

    /// Fairness: tasks of a session wait at the head with no slot for them while other sessions
    /// hold leases; those leases are revoked so their slots go to the queue.
    pub(super) fn revoke_leases_for_waiting(&mut self) {
        if self.queue.is_empty() || self.leases.by_id.values().all(|l| l.revoked) {
            return;
        }
        let waiting: Vec<SessionId> = self
            .queue
            .iter()
            .take(64)
            .filter_map(|id| self.tasks.get(id).map(|t| t.owner))
            .collect();
        self.revoke_leases(|l| waiting.iter().any(|s| *s != l.session));
    }

    /// The job of `sessions` was cancelled: their leases are revoked, and the workers stop the
    /// tasks running on them.
    pub(super) fn cancel_leases_of(&mut self, sessions: &[SessionId]) {
        let mut on: Vec<(WorkerId, u64)> = self
            .leases
            .by_id
            .iter()
            .filter(|(_, l)| sessions.contains(&l.session))
            .map(|(id, l)| (l.worker, *id))
            .collect();
        on.sort();
        for (worker, lease) in on {
            self.emit(Output::CancelLease { worker, lease });
        }
        self.revoke_leases(|l| sessions.contains(&l.session));
    }

    /// A task the head did not dispatch (so one a driver pushed on a lease) waits in `get` on
    /// `worker`, or resumes: the slots of a lease there are lent to other tasks meanwhile, as a
    /// dispatched task's are, so tasks it waits for can run. The worker names only the task, so
    /// the first lease there not lent already is taken for it.
    pub(super) fn leased_task_blocked(&mut self, worker: WorkerId, task: ObjectId, blocked: bool) {
        let lease = if blocked {
            self.leases
                .by_id
                .iter_mut()
                .filter(|(_, l)| l.worker == worker && l.lent_for.is_none())
                .min_by_key(|(id, _)| **id)
                .map(|(_, l)| {
                    l.lent_for = Some(task);
                    l.slots
                })
        } else {
            self.leases
                .by_id
                .values_mut()
                .find(|l| l.worker == worker && l.lent_for == Some(task))
                .map(|l| {
                    l.lent_for = None;
                    l.slots
                })
        };
        let (Some(slots), Some(w)) = (lease, self.workers.get_mut(&worker)) else {
            return;
        };
        if blocked {
            w.lent_slots += slots;
            self.place_tasks();
        } else {
            w.lent_slots = w.lent_slots.saturating_sub(slots);
        }
    }
}
