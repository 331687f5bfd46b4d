//! Jobs: the job id a driver session runs for, each job's task counts, and cancelling a job's
//! work (its sessions' tasks and actors) when the job stops.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use super::{failure::Failure, task_def::TaskDef, tasks::TaskState, Output, Scheduler};
use crate::{
    ids::{ObjectId, SessionId},
    ErrorKind,
};

/// Most jobs whose counts are kept; past it, the job seen longest ago with no driver connected
/// is forgotten, so the counts (and the metric series made of them) stay bounded.
pub const MAX_JOBS: usize = 64;

/// Task counts of one job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobView {
    /// The job id (`FLOTILLA_JOB` of its drivers).
    pub job: String,
    /// Tasks its drivers submitted (actor creations and calls included).
    pub tasks_submitted: u64,
    /// Tasks that finished successfully.
    pub tasks_finished: u64,
    /// Tasks that failed for good (cancelled ones included).
    pub tasks_failed: u64,
    /// Tasks of the job the head still tracks: waiting, queued or running.
    pub tasks_live: u64,
    /// Driver sessions of the job connected now.
    pub drivers: u64,
}

/// Counts of one job, and when it was last seen (an ever-growing tick, for eviction).
#[derive(Debug, Default)]
pub(super) struct JobCounts {
    submitted: u64,
    finished: u64,
    failed: u64,
    last_seen: u64,
}

/// Every job the head knows, by id.
#[derive(Debug, Default)]
pub(super) struct Jobs {
    by_id: BTreeMap<String, JobCounts>,
    /// The job of each session that runs for one, until the session has closed.
    by_session: HashMap<SessionId, Arc<str>>,
    tick: u64,
}

impl Jobs {
    fn touch(&mut self, job: &str) -> &mut JobCounts {
        self.tick += 1;
        let tick = self.tick;
        if !self.by_id.contains_key(job) {
            self.by_id.insert(job.to_owned(), JobCounts::default());
        }
        let counts = self
            .by_id
            .get_mut(job)
            .expect("inserted above when missing");
        counts.last_seen = tick;
        counts
    }
}

/// What cancelling a job did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCancelled {
    /// Driver sessions of the job; none of them may submit again.
    pub sessions: u64,
    /// Tasks cancelled.
    pub tasks: u64,
    /// Actors killed.
    pub actors: u64,
}

impl Scheduler {
    /// The job a new task of `session` counts for: its driver's, or, for a task submitted by a
    /// running task through its worker, that task's.
    pub(super) fn job_for(&self, session: SessionId, parent: Option<ObjectId>) -> Option<Arc<str>> {
        if let Some(job) = self.jobs.by_session.get(&session) {
            return Some(job.clone());
        }
        let from_worker = self
            .sessions
            .get(&session)
            .is_some_and(|s| s.worker.is_some());
        parent
            .filter(|_| from_worker)
            .and_then(|p| self.tasks.get(&p))
            .and_then(|t| t.job.clone())
    }

    /// Whether a task submitted by a running task through its worker comes from a task that was
    /// cancelled (its thread may run on until it returns or its worker exits): refused, so that
    /// nothing of a cancelled job starts again.
    pub(super) fn refuse_orphan(
        &mut self,
        session: SessionId,
        id: ObjectId,
        def: &TaskDef,
    ) -> bool {
        let Some(parent) = def.parent else {
            return false;
        };
        let from_worker = self
            .sessions
            .get(&session)
            .is_some_and(|s| s.worker.is_some());
        let cancelled = self
            .tasks
            .get(&parent)
            .is_some_and(|t| matches!(t.state, TaskState::Cancelled { .. }));
        if !from_worker || !cancelled {
            return false;
        }
        let name = def.name();
        self.emit(Output::Refused {
            session,
            object: id,
            failure: Failure::new(
                ErrorKind::Cancelled,
                name.clone(),
                format!("the task that submitted {name} was cancelled; {name} was not started"),
            ),
        });
        true
    }

    /// A session closed and its tasks' outcomes are counted: it no longer counts for its job.
    pub(super) fn session_closed(&mut self, session: SessionId) {
        self.jobs.by_session.remove(&session);
    }

    /// Starts counting `job` for the new `session`, forgetting the stalest job without drivers
    /// when too many are kept.
    pub(super) fn job_opened(&mut self, session: SessionId, job: &str) {
        self.jobs.by_session.insert(session, Arc::from(job));
        self.jobs.touch(job);
        while self.jobs.by_id.len() > MAX_JOBS {
            let connected: Vec<&str> = self
                .sessions
                .values()
                .filter_map(|s| s.job.as_deref())
                .collect();
            let stalest = self
                .jobs
                .by_id
                .iter()
                .filter(|(id, _)| !connected.contains(&id.as_str()))
                .min_by_key(|(_, c)| c.last_seen)
                .map(|(id, _)| id.clone());
            match stalest {
                Some(id) => {
                    self.jobs.by_id.remove(&id);
                }
                // Every kept job has a driver: keep them all rather than lose a live one.
                None => break,
            }
        }
    }

    /// Counts a task just submitted for its job, if it has one.
    pub(super) fn count_job_submit(&mut self, task: ObjectId) {
        if let Some(job) = self.tasks.get(&task).and_then(|t| t.job.clone()) {
            self.jobs.touch(&job).submitted += 1;
        }
    }

    /// Counts a task of `job` that was submitted and ended in one step (a direct call).
    pub(super) fn count_job_call(&mut self, job: &str, finished: bool) {
        self.jobs.touch(job).submitted += 1;
        self.count_job_outcome(job, finished);
    }

    /// Counts the final outcome of a task of `job`.
    pub(super) fn count_job_outcome(&mut self, job: &str, finished: bool) {
        let counts = self.jobs.touch(job);
        if finished {
            counts.finished += 1;
        } else {
            counts.failed += 1;
        }
    }

    /// Whether `session` belongs to a cancelled job; its submissions are refused.
    pub(super) fn refuse_cancelled(
        &mut self,
        session: SessionId,
        id: ObjectId,
        name: &str,
    ) -> bool {
        let Some(s) = self.sessions.get(&session) else {
            return false;
        };
        if !s.cancelled {
            return false;
        }
        let job = s.job.clone().unwrap_or_default();
        self.emit(Output::Refused {
            session,
            object: id,
            failure: Failure::new(
                ErrorKind::Cancelled,
                name.to_owned(),
                format!("job {job} was cancelled; {name} was not started"),
            ),
        });
        true
    }

    /// Cancels the work of `job`: every task of the job (its driver sessions' and those their
    /// tasks submitted through their workers) is cancelled, every actor its driver sessions own
    /// (detached ones too) is killed, and those sessions may submit nothing more.
    /// Sessions that open later under the same id (a new attempt of the job) are not affected.
    pub(super) fn cancel_job_work(&mut self, job: &str) -> JobCancelled {
        let mut done = JobCancelled::default();
        let mut sessions: Vec<SessionId> = Vec::new();
        for (id, s) in &mut self.sessions {
            if s.job.as_deref() == Some(job) {
                s.cancelled = true;
                sessions.push(*id);
            }
        }
        sessions.sort();
        done.sessions = sessions.len() as u64;
        let why = format!("cancelled with its job {job}");
        let mut tasks: Vec<ObjectId> = self
            .tasks
            .iter()
            .filter(|(_, t)| {
                (sessions.contains(&t.owner) || t.job.as_deref() == Some(job))
                    && !t.is_actor_creation()
            })
            .map(|(id, _)| *id)
            .collect();
        tasks.sort();
        for id in tasks {
            self.cancel_task(id, &why);
            done.tasks += 1;
        }
        let mut actors: Vec<ObjectId> = self
            .actors
            .iter()
            .filter(|(_, a)| sessions.contains(&a.owner) && !a.is_dead())
            .map(|(id, _)| *id)
            .collect();
        actors.sort();
        for id in actors {
            self.kill_actor(id, &why);
            done.actors += 1;
        }
        self.cancel_leases_of(&sessions);
        self.place_tasks();
        done
    }

    /// Task counts of every job kept, by id.
    pub(super) fn job_views(&self) -> Vec<JobView> {
        let mut views: BTreeMap<&str, JobView> = self
            .jobs
            .by_id
            .iter()
            .map(|(id, c)| {
                (
                    id.as_str(),
                    JobView {
                        job: id.clone(),
                        tasks_submitted: c.submitted,
                        tasks_finished: c.finished,
                        tasks_failed: c.failed,
                        ..JobView::default()
                    },
                )
            })
            .collect();
        for s in self.sessions.values() {
            if let Some(view) = s.job.as_deref().and_then(|j| views.get_mut(j)) {
                view.drivers += 1;
            }
        }
        for t in self.tasks.values() {
            if let Some(view) = t.job.as_deref().and_then(|j| views.get_mut(j)) {
                view.tasks_live += 1;
            }
        }
        views.into_values().collect()
    }
}
