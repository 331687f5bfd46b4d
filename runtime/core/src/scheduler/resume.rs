//! What a restarted head learns again: sessions that resume with the ids they had, and the
//! objects workers still hold, adopted until their sessions claim or forget them.
//!
//! A head keeps its state in memory only. When it restarts, workers register again and report
//! their stores' contents; drivers reconnect with their session and the ids of the stored
//! objects they still reference, put their small values again and resubmit the tasks whose
//! results they had not learned. Both may come in either order, so:
//! - an object reported for a session that has not resumed is adopted for it and released if the
//!   session does not resume within [`RESUME_GRACE`];
//! - a session that resumes keeps the adopted objects it names and forgets the rest; those it
//!   names that no worker reported yet wait, pending, and fail as lost if none reports them within
//!   [`RESUME_GRACE`].

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{
    failure::Failure,
    objects::{Location, Object, ObjectValue},
    Output, Scheduler,
};
use crate::{
    ids::{ObjectId, SessionId, WorkerId},
    ErrorKind,
};

/// How long an adopted object waits for its session to resume, and a named object for a worker
/// to report it.
pub const RESUME_GRACE: Duration = Duration::from_secs(60);

/// An object a worker reports holding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HeldObject {
    /// The object.
    pub(super) id: ObjectId,
    /// Its size in bytes.
    pub(super) size: u64,
    /// The shared-memory segment the worker keeps it in, if any.
    pub(super) shm_path: Option<String>,
}

/// Objects waiting for a session or a worker, with their deadlines.
#[derive(Debug, Default)]
pub(super) struct Resumption {
    /// Objects adopted for sessions that have not resumed, by session.
    unclaimed: HashMap<SessionId, (Instant, Vec<ObjectId>)>,
    /// Objects a resumed session named that no worker has reported yet.
    awaited: Vec<(ObjectId, Instant)>,
}

impl Scheduler {
    /// Opens session `id` again, as a driver that lost the head asks; refused while a session
    /// with that id is open.
    pub(super) fn resume(
        &mut self,
        id: SessionId,
        worker: Option<String>,
        job: Option<String>,
        holds: Vec<ObjectId>,
        now: Instant,
    ) -> Result<(), String> {
        if id.0 == 0 {
            return Err("session 0 does not exist".into());
        }
        if self.sessions.contains_key(&id) {
            return Err(format!("session {} is still open at this head", id.0));
        }
        self.insert_session(id, worker, job);
        if id.0 >= self.next_session {
            self.next_session = id.0 + 1;
        }
        let adopted = self
            .resumption
            .unclaimed
            .remove(&id)
            .map(|(_, ids)| ids)
            .unwrap_or_default();
        let mut forgotten: Vec<ObjectId> =
            adopted.into_iter().filter(|o| !holds.contains(o)).collect();
        forgotten.sort();
        for o in forgotten {
            self.release_by_owner(id, o);
        }
        for o in holds {
            if o.session() == id && !self.objects.contains_key(&o) {
                // Pending until a worker reports it (or the grace passes).
                self.objects.insert(o, Object::new(id, None));
                self.resumption.awaited.push((o, now + RESUME_GRACE));
            }
        }
        Ok(())
    }

    /// A worker that registered with this head reports what its store holds: objects this head
    /// awaits get their location, objects of sessions that have not resumed are adopted for them,
    /// the rest are freed on the worker.
    pub(super) fn adopt(&mut self, worker: WorkerId, held: Vec<HeldObject>, now: Instant) {
        if !self.workers.contains_key(&worker) {
            return;
        }
        for h in held {
            let location = Location {
                worker,
                shm_path: h.shm_path,
            };
            let session = h.id.session();
            match self.objects.get_mut(&h.id) {
                Some(obj) if matches!(obj.value, ObjectValue::Pending) => {
                    if self.tasks.contains_key(&h.id) {
                        // Resubmitted: it runs again, and its new result replaces this copy.
                        self.emit(Output::Free {
                            worker,
                            object: h.id,
                        });
                    } else {
                        self.resumption.awaited.retain(|(o, _)| *o != h.id);
                        self.set_object(
                            h.id,
                            ObjectValue::Stored {
                                size: h.size,
                                locations: vec![location],
                            },
                        );
                        self.place_tasks();
                    }
                }
                Some(obj) => match &mut obj.value {
                    ObjectValue::Stored { locations, .. } => {
                        if !locations.iter().any(|l| l.worker == worker) {
                            locations.push(location);
                        }
                    }
                    _ => self.emit(Output::Free {
                        worker,
                        object: h.id,
                    }),
                },
                None if !self.sessions.contains_key(&session) && session.0 != 0 => {
                    let mut obj = Object::new(session, None);
                    obj.value = ObjectValue::Stored {
                        size: h.size,
                        locations: vec![location],
                    };
                    self.objects.insert(h.id, obj);
                    self.resumption
                        .unclaimed
                        .entry(session)
                        .or_insert_with(|| (now + RESUME_GRACE, Vec::new()))
                        .1
                        .push(h.id);
                }
                // Its session is here and did not name it: nobody references it any more.
                None => self.emit(Output::Free {
                    worker,
                    object: h.id,
                }),
            }
        }
    }

    /// Releases adopted objects whose session did not come back in time, and fails awaited
    /// objects no worker reported.
    pub(super) fn end_overdue_resumptions(&mut self, now: Instant) {
        let mut overdue: Vec<SessionId> = self
            .resumption
            .unclaimed
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        overdue.sort();
        for session in overdue {
            let (_, ids) = self
                .resumption
                .unclaimed
                .remove(&session)
                .expect("collected from the table just above");
            for id in ids {
                self.release_by_owner(session, id);
            }
        }
        let (lost, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.resumption.awaited)
            .into_iter()
            .partition(|(_, deadline)| *deadline <= now);
        self.resumption.awaited = waiting;
        for (id, _) in lost {
            let unreported = self.objects.get(&id).is_some_and(|o| {
                matches!(o.value, ObjectValue::Pending) && !self.tasks.contains_key(&id)
            });
            if unreported {
                let failure = Failure::without_task(
                    ErrorKind::ObjectLost,
                    format!(
                        "object {id} was lost when the head restarted: no worker reported \
                         holding it within {RESUME_GRACE:?}"
                    ),
                );
                self.set_object(id, ObjectValue::Failed(failure));
            }
        }
    }
}
