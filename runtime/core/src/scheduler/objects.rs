//! The object directory: each object's value or locations, its references, the lineage that
//! rebuilds it, and who waits for it.

use crate::ErrorKind;
use bytes::Bytes;

use flotilla_proto::{INLINE_MAX_BYTES, SESSION_INLINE_BUDGET};

use super::{failure::Failure, task_def::TaskDef, Output, Scheduler};
use crate::ids::{ObjectId, SessionId, WorkerId};

/// Where a copy of a stored object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Location {
    pub(super) worker: WorkerId,
    /// The shared-memory segment the worker keeps the object in, which processes on its host map
    /// directly; `None` when the copy is only in the worker's store.
    pub(super) shm_path: Option<String>,
}

impl Location {
    /// A copy in `worker`'s store, with no segment known.
    pub(super) fn on(worker: WorkerId) -> Self {
        Location {
            worker,
            shm_path: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum ObjectValue {
    /// Its task has not finished.
    Pending,
    /// Small enough to travel with every message about it.
    Inline(Bytes),
    /// Kept by the workers at `locations`; when the last one goes, the object is rebuilt,
    /// failed or forgotten (see `object_lost`).
    Stored {
        size: u64,
        locations: Vec<Location>,
    },
    Failed(Failure),
}

/// A value a session puts.
#[derive(Debug)]
pub(super) enum PutValue {
    Inline(Bytes),
    /// Already uploaded to `locations`, which may name workers that are gone by now.
    Stored {
        size: u64,
        locations: Vec<Location>,
    },
}

#[derive(Debug)]
pub(super) struct Object {
    pub(super) value: ObjectValue,
    /// Holders: the owner until it releases, plus every live task that takes it as an argument,
    /// plus every object whose lineage needs it.
    pub(super) refs: u32,
    pub(super) owner: SessionId,
    pub(super) owner_holds: bool,
    pub(super) subscribers: Vec<SessionId>,
    /// Tasks waiting for this object.
    pub(super) dependents: Vec<ObjectId>,
    /// The task that produced it, to rebuild it when lost.
    pub(super) lineage: Option<TaskDef>,
    /// Objects referenced inside its value, each held (one reference) until this one is freed.
    pub(super) contains: Vec<ObjectId>,
}

impl Object {
    /// A pending object its owner holds.
    pub(super) fn new(owner: SessionId, lineage: Option<TaskDef>) -> Self {
        Object {
            value: ObjectValue::Pending,
            refs: 1,
            owner,
            owner_holds: true,
            subscribers: Vec::new(),
            dependents: Vec::new(),
            lineage,
            contains: Vec::new(),
        }
    }

    /// Whether `worker` holds the only copy.
    pub(super) fn only_on(&self, worker: WorkerId) -> bool {
        matches!(&self.value, ObjectValue::Stored { locations, .. }
            if locations.len() == 1 && locations[0].worker == worker)
    }
}

/// Bytes an object's value takes at the head.
pub(super) fn inline_len(value: &ObjectValue) -> u64 {
    match value {
        ObjectValue::Inline(b) => b.len() as u64,
        _ => 0,
    }
}

impl Scheduler {
    /// Why an inline put of `len` bytes by `session` is refused, if it is: too large for one
    /// message, or past what the head holds for one session.
    fn inline_refusal(&self, session: SessionId, len: usize) -> Option<String> {
        if len > INLINE_MAX_BYTES {
            return Some(format!(
                "an inline value may hold at most {INLINE_MAX_BYTES} bytes, this one has {len}: \
                 larger values belong in a worker's store (Runtime::put puts them there)"
            ));
        }
        let held = self.inline_bytes.get(&session).copied().unwrap_or(0);
        (held + len as u64 > SESSION_INLINE_BUDGET).then(|| {
            format!(
                "this session already has the head hold {held} bytes of inline values (at most \
                 {SESSION_INLINE_BUDGET}): drop references to values it no longer needs"
            )
        })
    }

    /// Records a session's put and tells its owner.
    pub(super) fn put_object(&mut self, session: SessionId, id: ObjectId, value: PutValue) {
        // Ids are minted by their session; anything else would overwrite another's object.
        if id.session() != session || self.objects.contains_key(&id) || self.tasks.contains_key(&id)
        {
            let failure = Failure::new(
                ErrorKind::Invalid,
                "put",
                format!("object id {id} is not this session's to create"),
            );
            self.emit(Output::Refused {
                session,
                object: id,
                failure,
            });
            return;
        }
        if let PutValue::Inline(b) = &value {
            if let Some(why) = self.inline_refusal(session, b.len()) {
                let failure = Failure::new(ErrorKind::Invalid, "put", why);
                self.emit(Output::Refused {
                    session,
                    object: id,
                    failure,
                });
                return;
            }
        }
        let value = match value {
            PutValue::Inline(b) => ObjectValue::Inline(b),
            PutValue::Stored {
                size,
                mut locations,
            } => {
                locations.retain(|l| self.workers.contains_key(&l.worker));
                if locations.is_empty() {
                    ObjectValue::Failed(Failure::without_task(
                        ErrorKind::ObjectLost,
                        format!("object {id} was put on a worker that is gone"),
                    ))
                } else {
                    ObjectValue::Stored { size, locations }
                }
            }
        };
        self.objects.insert(id, Object::new(session, None));
        self.set_object(id, value);
        self.place_tasks();
    }

    /// The owner dropped its reference.
    pub(super) fn release_by_owner(&mut self, session: SessionId, id: ObjectId) {
        let Some(obj) = self.objects.get_mut(&id) else {
            return;
        };
        if obj.owner != session || !obj.owner_holds {
            return;
        }
        obj.owner_holds = false;
        self.decref(id);
    }

    /// `outer`'s value references `inner` objects: each is held until `outer` is freed, as Ray
    /// holds the references contained in an object. Objects already freed are skipped (the
    /// value's copy of them can no longer be read), and each is held once however often it is
    /// reported (a task run again reports its result's references again).
    pub(super) fn add_contained(&mut self, outer: ObjectId, inner: Vec<ObjectId>) {
        if !self.objects.contains_key(&outer) {
            return;
        }
        for id in inner {
            let known = self.objects[&outer].contains.contains(&id);
            if id == outer || known {
                continue;
            }
            let Some(obj) = self.objects.get_mut(&id) else {
                continue;
            };
            obj.refs += 1;
            if let Some(o) = self.objects.get_mut(&outer) {
                o.contains.push(id);
            }
        }
    }

    /// Tells `session` the object's value once it has one (at once if it has).
    pub(super) fn add_subscriber(&mut self, session: SessionId, id: ObjectId) {
        match self.objects.get_mut(&id) {
            Some(obj) if matches!(obj.value, ObjectValue::Pending) => {
                if !obj.subscribers.contains(&session) {
                    obj.subscribers.push(session);
                }
            }
            Some(_) => self.emit(Output::State {
                session,
                object: id,
            }),
            None => {
                let failure = Failure::without_task(
                    ErrorKind::ObjectLost,
                    format!("object {id} does not exist (it was freed, or never created)"),
                );
                self.emit(Output::Refused {
                    session,
                    object: id,
                    failure,
                });
            }
        }
    }

    /// Adds `worker` to a stored object's locations.
    pub(super) fn add_copy(&mut self, worker: WorkerId, id: ObjectId) {
        if !self.workers.contains_key(&worker) {
            return;
        }
        if let Some(obj) = self.objects.get_mut(&id) {
            if let ObjectValue::Stored { locations, .. } = &mut obj.value {
                // A location it already has keeps its segment.
                if !locations.iter().any(|l| l.worker == worker) {
                    locations.push(Location::on(worker));
                }
            }
        } else {
            // Freed meanwhile: the copy is garbage.
            self.emit(Output::Free { worker, object: id });
        }
        self.check_drains();
    }

    /// Gives an object its value: tells its owner and subscribers, wakes or fails its dependents.
    pub(super) fn set_object(&mut self, id: ObjectId, value: ObjectValue) {
        let Some(obj) = self.objects.get_mut(&id) else {
            return;
        };
        let held = self.inline_bytes.entry(obj.owner).or_default();
        *held = (*held + inline_len(&value)).saturating_sub(inline_len(&obj.value));
        obj.value = value;
        let dependents = std::mem::take(&mut obj.dependents);
        let mut subscribers = std::mem::take(&mut obj.subscribers);
        let owner = obj.owner;
        if obj.owner_holds && !subscribers.contains(&owner) {
            subscribers.push(owner);
        }
        let cause = match &obj.value {
            ObjectValue::Failed(f) => Some(f.message.clone()),
            _ => None,
        };
        for session in subscribers {
            if self.sessions.contains_key(&session) {
                self.emit(Output::State {
                    session,
                    object: id,
                });
            }
        }
        for t in dependents {
            match &cause {
                Some(cause) => self.argument_failed(t, cause),
                None => self.argument_ready(t),
            }
        }
        // Failing a dependent may have released the last reference and freed the object already.
        if self.objects.get(&id).is_some_and(|o| o.refs == 0) {
            self.free_object(id);
        }
    }

    /// Drops one reference; the last one frees the object unless it is still being computed.
    pub(super) fn decref(&mut self, id: ObjectId) {
        let Some(obj) = self.objects.get_mut(&id) else {
            return;
        };
        obj.refs = obj.refs.saturating_sub(1);
        if obj.refs == 0 && !matches!(obj.value, ObjectValue::Pending) {
            self.free_object(id);
        }
    }

    /// Removes an object from the directory and every worker's store.
    fn free_object(&mut self, id: ObjectId) {
        let Some(obj) = self.objects.remove(&id) else {
            return;
        };
        if let Some(held) = self.inline_bytes.get_mut(&obj.owner) {
            *held = held.saturating_sub(inline_len(&obj.value));
        }
        // The last handle of an actor is gone: the actor goes too, unless it is detached.
        if self
            .actors
            .get(&id)
            .is_some_and(|a| !a.detached && !a.is_dead())
        {
            self.kill_actor(id, "every handle to it was dropped");
        }
        if let ObjectValue::Stored { locations, .. } = &obj.value {
            for l in locations {
                self.emit(Output::Free {
                    worker: l.worker,
                    object: id,
                });
            }
        }
        // Function outputs and actors pin their arguments for rebuilds and restarts.
        if let Some(def) = &obj.lineage {
            for dep in def.deps() {
                self.decref(dep);
            }
        }
        for inner in obj.contains {
            self.decref(inner);
        }
        self.check_drains();
    }

    /// Drops `worker` from every location list (with the segment it kept there) and returns the
    /// objects that had no other copy, in id order.
    pub(super) fn drop_locations(&mut self, worker: WorkerId) -> Vec<ObjectId> {
        let mut lost = Vec::new();
        for (id, obj) in self.objects.iter_mut() {
            if let ObjectValue::Stored { locations, .. } = &mut obj.value {
                if let Some(pos) = locations.iter().position(|l| l.worker == worker) {
                    locations.remove(pos);
                    if locations.is_empty() {
                        lost.push(*id);
                    }
                }
            }
        }
        lost.sort();
        lost
    }

    /// An object's last copy went with its worker: rebuild it from lineage if someone still
    /// holds it, fail it if it cannot be rebuilt, forget it if nobody holds it.
    pub(super) fn object_lost(&mut self, id: ObjectId, worker_name: &str) {
        let Some(obj) = self.objects.get_mut(&id) else {
            return;
        };
        let rebuildable = obj
            .lineage
            .as_ref()
            .is_some_and(|def| def.function().is_some());
        if obj.refs > 0 && rebuildable && !self.tasks.contains_key(&id) {
            // Rebuild from lineage: run the producing task again.
            obj.value = ObjectValue::Pending;
            let def = obj
                .lineage
                .clone()
                .expect("rebuildable means it has lineage");
            let owner = obj.owner;
            self.counters.retried += 1;
            self.insert_task(def, owner, false);
        } else if obj.refs > 0 {
            let failure = Failure::without_task(
                ErrorKind::ObjectLost,
                format!(
                    "object {id} was lost with worker {worker_name} and cannot be rebuilt (it was put, not computed)"
                ),
            );
            self.set_object(id, ObjectValue::Failed(failure));
        } else if let Some(obj) = self.objects.remove(&id) {
            for inner in obj.contains {
                self.decref(inner);
            }
        }
    }
}
