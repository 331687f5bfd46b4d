//! Actor handles: a reference to a live actor on some worker whose method calls run one at a
//! time, in the order each caller made them.

use std::sync::Arc;

use flotilla_core::ObjectId;
use flotilla_proto::v1::{self as pb, task_spec};

use super::{
    object_ref::{ArgList, ObjectRef},
    options::ActorOptions,
    Runtime,
};
use crate::error::{Error, ErrorKind, Result};

/// An untyped handle to an actor; `#[flotilla::actor]` wraps it in a typed handle.
#[derive(Clone)]
pub struct ActorHandle {
    id: ObjectId,
    class: Arc<str>,
    rt: Runtime,
    /// Keeps the actor alive while handles exist (for the creator).
    _keep: ObjectRef<()>,
}

impl std::fmt::Debug for ActorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorHandle({} {})", self.class, self.id)
    }
}

impl ActorHandle {
    /// Creates an actor of a registered class and waits until its constructor ran.
    pub async fn create(
        rt: &Runtime,
        class: &str,
        signature: &str,
        args: ArgList,
        options: &ActorOptions,
    ) -> Result<ActorHandle> {
        let create = options.to_proto(class);
        let label = format!("{class}::new");
        let r: ObjectRef<()> = rt.submit(
            task_spec::Kind::CreateActor(create),
            &label,
            signature,
            args,
            None,
        );
        rt.get(&r).await?;
        Ok(ActorHandle {
            id: r.id(),
            class: class.into(),
            rt: rt.clone(),
            _keep: r,
        })
    }

    /// Finds a named actor; fails when none is alive or it is of another class.
    pub async fn lookup(rt: &Runtime, name: &str, class: &str) -> Result<ActorHandle> {
        let found = rt.lookup_actor_id(name).await?;
        if found.actor == 0 {
            return Err(Error::Task {
                kind: ErrorKind::ActorDied,
                task: name.to_string(),
                message: found.error,
            });
        }
        if found.class != class {
            return Err(Error::Task {
                kind: ErrorKind::TypeMismatch,
                task: name.to_string(),
                message: format!("actor {name:?} is a {}, not a {class}", found.class),
            });
        }
        let id = ObjectId(found.actor);
        Ok(ActorHandle {
            id,
            class: class.into(),
            rt: rt.clone(),
            _keep: rt.borrowed_ref(id, None),
        })
    }

    /// Calls a method; the generated typed handles wrap this.
    pub fn call<R>(&self, method: &str, signature: &str, args: ArgList) -> ObjectRef<R> {
        let call = pb::ActorCall {
            actor: self.id.0,
            method: method.to_string(),
        };
        self.rt.submit(
            task_spec::Kind::ActorCall(call),
            method,
            signature,
            args,
            None,
        )
    }

    /// The actor's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The runtime the handle calls through.
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }
}
