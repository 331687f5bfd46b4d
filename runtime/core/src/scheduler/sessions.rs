//! Sessions: a driver program, or a worker's own session for the tasks its tasks submit; and
//! what ending one takes with it.

use super::Scheduler;
use crate::ids::{ObjectId, SessionId};

#[derive(Debug)]
pub(super) struct Session {
    /// The worker this session lives in; `None` for a driver.
    pub(super) worker: Option<String>,
    /// The job it runs for (`FLOTILLA_JOB` of its driver), if any.
    pub(super) job: Option<String>,
    /// Its job was cancelled: it may submit nothing more.
    pub(super) cancelled: bool,
}

impl Scheduler {
    /// Ends a session: cancels its tasks, kills its actors that are not detached, releases its
    /// objects and its subscriptions.
    pub(super) fn end_session(&mut self, session: SessionId) {
        self.inline_bytes.remove(&session);
        if self.sessions.remove(&session).is_none() {
            return;
        }
        self.end_leases(|l| l.session == session);
        let mut owned_tasks: Vec<ObjectId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.owner == session && !t.is_actor_creation())
            .map(|(id, _)| *id)
            .collect();
        owned_tasks.sort();
        for id in owned_tasks {
            self.cancel_task(id, "its driver went away");
        }
        let mut owned_actors: Vec<ObjectId> = self
            .actors
            .iter()
            .filter(|(_, a)| a.owner == session && !a.detached && !a.is_dead())
            .map(|(id, _)| *id)
            .collect();
        owned_actors.sort();
        for id in owned_actors {
            self.kill_actor(id, "its driver went away");
        }
        let mut owned: Vec<ObjectId> = self
            .objects
            .iter()
            .filter(|(_, o)| o.owner == session && o.owner_holds)
            .map(|(id, _)| *id)
            .collect();
        owned.sort();
        for id in owned {
            self.release_by_owner(session, id);
        }
        for obj in self.objects.values_mut() {
            obj.subscribers.retain(|s| *s != session);
        }
        // Forgotten last, so the outcomes of its tasks still count for its job.
        self.session_closed(session);
        self.place_tasks();
    }
}
