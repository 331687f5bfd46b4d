//! Actors: creation, calls dispatched one at a time in arrival order, restarts after their
//! worker died, death, and names.

use crate::ErrorKind;
use std::collections::{BTreeSet, VecDeque};

use super::{
    failure::Failure,
    objects::ObjectValue,
    task_def::{ActorCreation, TaskDef},
    tasks::TaskState,
    Output, Scheduler,
};
use crate::ids::{ObjectId, SessionId, WorkerId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ActorState {
    /// Its first creation has not finished.
    Creating,
    Alive {
        worker: WorkerId,
    },
    /// Its worker died; a new creation is under way.
    Restarting,
    Dead,
}

/// A live actor as a lookup answers it.
#[derive(Debug)]
pub(super) struct FoundActor {
    pub(super) id: ObjectId,
    pub(super) class: String,
    /// Its worker and incarnation (restarts so far), when it is alive now.
    pub(super) at: Option<(WorkerId, u32)>,
}

#[derive(Debug)]
pub(super) struct Actor {
    pub(super) class: String,
    /// The name it is registered under; emptied when it dies.
    pub(super) name: String,
    pub(super) owner: SessionId,
    pub(super) detached: bool,
    /// Restarts allowed; negative means without limit.
    pub(super) max_restarts: i32,
    pub(super) restarts: u32,
    pub(super) state: ActorState,
    /// The creation task, run again on each restart.
    pub(super) create: TaskDef,
    /// Calls in arrival order, not yet dispatched.
    pub(super) queue: VecDeque<ObjectId>,
    /// Calls dispatched and not yet finished, ordered so that failing them is deterministic.
    pub(super) inflight: BTreeSet<ObjectId>,
    /// Why it died, for calls that arrive later.
    pub(super) death: String,
}

impl Actor {
    pub(super) fn is_dead(&self) -> bool {
        self.state == ActorState::Dead
    }
}

impl Scheduler {
    /// Registers the actor a creation task will bring up; a live actor's name is refused.
    pub(super) fn add_actor(
        &mut self,
        owner: SessionId,
        def: &TaskDef,
        create: &ActorCreation,
    ) -> Result<(), Failure> {
        let id = def.id;
        if !create.name.is_empty() {
            if let Some(existing) = self.named_actors.get(&create.name) {
                if self.actors.get(existing).is_some_and(|a| !a.is_dead()) {
                    return Err(Failure::new(
                        ErrorKind::Invalid,
                        create.class.clone(),
                        format!("an actor named {:?} already exists", create.name),
                    ));
                }
            }
            self.named_actors.insert(create.name.clone(), id);
        }
        self.actors.insert(
            id,
            Actor {
                class: create.class.clone(),
                name: create.name.clone(),
                owner,
                detached: create.detached,
                max_restarts: create.max_restarts,
                restarts: 0,
                state: ActorState::Creating,
                create: def.clone(),
                queue: VecDeque::new(),
                inflight: BTreeSet::new(),
                death: String::new(),
            },
        );
        Ok(())
    }

    /// Whether a call may be submitted to `actor`: it must exist and not be dead.
    pub(super) fn check_callable(&self, actor: ObjectId, method: &str) -> Result<(), Failure> {
        match self.actors.get(&actor) {
            None => Err(Failure::new(
                ErrorKind::ActorDied,
                method,
                format!(
                    "no actor {actor} exists at this head (actors do not survive a restart of \
                     the head: create it again)"
                ),
            )),
            Some(a) if a.is_dead() => Err(Failure::new(
                ErrorKind::ActorDied,
                method,
                format!("actor {} ({}) is dead: {}", actor, a.class, a.death),
            )),
            Some(_) => Ok(()),
        }
    }

    /// The live actor registered under `name`, or why there is none.
    pub(super) fn live_actor_named(&self, name: &str) -> Result<FoundActor, String> {
        self.named_actors
            .get(name)
            .and_then(|id| self.found_actor(*id))
            .ok_or_else(|| format!("no live actor is named {name:?}"))
    }

    /// The actor `id` if it is not dead: its class, and where it runs when it is alive.
    pub(super) fn live_actor(&self, id: ObjectId) -> Result<FoundActor, String> {
        self.found_actor(id)
            .ok_or_else(|| format!("no live actor {id} exists at this head"))
    }

    fn found_actor(&self, id: ObjectId) -> Option<FoundActor> {
        let a = self.actors.get(&id).filter(|a| !a.is_dead())?;
        let at = match a.state {
            ActorState::Alive { worker } => Some((worker, a.restarts)),
            _ => None,
        };
        Some(FoundActor {
            id,
            class: a.class.clone(),
            at,
        })
    }

    /// Dispatches an alive actor's calls from the front of its queue while they are ready.
    pub(super) fn pump_actor(&mut self, actor: ObjectId) {
        loop {
            let Some(a) = self.actors.get(&actor) else {
                return;
            };
            let ActorState::Alive { worker } = a.state else {
                return;
            };
            let Some(&front) = a.queue.front() else {
                return;
            };
            let ready = self
                .tasks
                .get(&front)
                .is_some_and(|t| t.state == TaskState::Pending);
            if !ready {
                if !self.tasks.contains_key(&front) {
                    self.actors
                        .get_mut(&actor)
                        .expect("found at the top of the loop")
                        .queue
                        .pop_front();
                    continue;
                }
                return;
            }
            if !self.args_ready(front) {
                continue;
            }
            // (Actors are never removed from the table, only marked dead.)
            let a = self
                .actors
                .get_mut(&actor)
                .expect("actors stay in the table");
            a.queue.pop_front();
            a.inflight.insert(front);
            self.dispatch(front, worker);
        }
    }

    /// The actor's creation finished on `worker`: it takes calls now.
    pub(super) fn actor_created(&mut self, actor: ObjectId, worker: WorkerId) {
        let Some(a) = self.actors.get_mut(&actor) else {
            return;
        };
        a.state = ActorState::Alive { worker };
        if let Some(w) = self.workers.get_mut(&worker) {
            w.actors.insert(actor);
        }
        self.pump_actor(actor);
    }

    /// The actor's constructor failed: the actor is dead, its handle carries the failure.
    pub(super) fn actor_creation_failed(&mut self, id: ObjectId, failure: Failure) {
        self.count_outcome(id, false);
        self.remove_task(id);
        let msg = format!(
            "its constructor {} failed: {}",
            failure.task, failure.message
        );
        if self
            .objects
            .get(&id)
            .is_some_and(|o| matches!(o.value, ObjectValue::Pending))
        {
            self.set_object(id, ObjectValue::Failed(failure));
        }
        self.actor_dead(id, msg);
    }

    /// The actor's worker died (or is being drained) while it was being created.
    pub(super) fn actor_creation_lost(&mut self, actor: ObjectId, worker_name: &str) {
        self.actor_worker_died(
            actor,
            &format!("its worker {worker_name} died while it was being created"),
        );
    }

    /// The actor lost its worker: its running calls fail, and it restarts if it may.
    pub(super) fn actor_worker_died(&mut self, actor: ObjectId, why: &str) {
        let Some(a) = self.actors.get_mut(&actor) else {
            return;
        };
        if a.is_dead() {
            return;
        }
        let inflight = std::mem::take(&mut a.inflight);
        let class = a.class.clone();
        for call in inflight {
            self.fail_task(
                call,
                ErrorKind::ActorDied,
                format!("actor {actor} ({class}) died while running this call: {why}"),
            );
        }
        let a = self
            .actors
            .get_mut(&actor)
            .expect("actors stay in the table");
        let can_restart = a.max_restarts < 0 || i64::from(a.restarts) < i64::from(a.max_restarts);
        if can_restart {
            a.restarts += 1;
            a.state = ActorState::Restarting;
            let create = a.create.clone();
            let owner = a.owner;
            self.remove_task(actor);
            self.insert_task(create, owner, false);
        } else {
            let msg = format!(
                "{why}, and it was restarted {} of max_restarts={} times",
                a.restarts, a.max_restarts
            );
            // A creation that was running on the dead worker goes with the actor.
            self.remove_task(actor);
            self.actor_dead(actor, msg);
        }
    }

    /// The actor is dead for good: its name is free, its pending handle and every call fail.
    pub(super) fn actor_dead(&mut self, actor: ObjectId, why: String) {
        let Some(a) = self.actors.get_mut(&actor) else {
            return;
        };
        a.state = ActorState::Dead;
        a.death = why.clone();
        let class = a.class.clone();
        let name = std::mem::take(&mut a.name);
        let queued: Vec<ObjectId> = a.queue.drain(..).collect();
        let inflight = std::mem::take(&mut a.inflight);
        if self.named_actors.get(&name) == Some(&actor) {
            self.named_actors.remove(&name);
        }
        for w in self.workers.values_mut() {
            w.actors.remove(&actor);
        }
        if self
            .objects
            .get(&actor)
            .is_some_and(|o| matches!(o.value, ObjectValue::Pending))
        {
            let failure = Failure::new(
                ErrorKind::ActorDied,
                format!("{class}::new"),
                format!("actor {actor} ({class}) is dead: {why}"),
            );
            self.set_object(actor, ObjectValue::Failed(failure));
        }
        for call in queued.into_iter().chain(inflight) {
            self.fail_task(
                call,
                ErrorKind::ActorDied,
                format!("actor {actor} ({class}) is dead: {why}"),
            );
        }
    }

    /// Stops an actor on its worker, and cancels its creation if that is still running.
    pub(super) fn kill_actor(&mut self, actor: ObjectId, why: &str) {
        let Some(a) = self.actors.get(&actor) else {
            return;
        };
        if let ActorState::Alive { worker } = a.state {
            self.emit(Output::KillActor { worker, actor });
        }
        if self.tasks.contains_key(&actor) {
            self.cancel_task(actor, why);
        }
        self.actor_dead(actor, why.to_string());
    }
}
