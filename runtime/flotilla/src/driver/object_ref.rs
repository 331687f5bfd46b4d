//! [`ObjectRef`]: a typed reference to a value that a task will produce (or was put), and
//! [`IntoArg`], which lets a call take either a value or a reference for each argument.

use std::{
    future::{Future, IntoFuture},
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
};

use flotilla_core::ObjectId;
use flotilla_proto::v1::{arg, Arg};
use serde::{de::DeserializeOwned, Serialize};

use super::{host::TaskBinding, Runtime, Session};
use crate::{
    codec,
    error::{Error, Result},
};

/// Keeps an object alive; the last one dropped releases it at the head.
pub(crate) struct RefInner {
    pub(crate) id: ObjectId,
    pub(crate) owned: bool,
    pub(crate) session: Arc<Session>,
}

impl Drop for RefInner {
    fn drop(&mut self) {
        self.session.release(self.id, self.owned);
    }
}

/// A reference to a value of type `T` somewhere in the cluster.
///
/// Returned at once by remote calls; await it (or `rt.get(&r)`) for the value, or pass it to
/// other calls as an argument, which makes it a dependency resolved before they run.
pub struct ObjectRef<T> {
    pub(crate) inner: Arc<RefInner>,
    pub(crate) binding: Option<TaskBinding>,
    _value: PhantomData<fn() -> T>,
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        ObjectRef {
            inner: self.inner.clone(),
            binding: self.binding.clone(),
            _value: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ObjectRef<{}>({})",
            std::any::type_name::<T>(),
            self.inner.id
        )
    }
}

impl<T> ObjectRef<T> {
    pub(crate) fn new(inner: Arc<RefInner>, binding: Option<TaskBinding>) -> Self {
        ObjectRef {
            inner,
            binding,
            _value: PhantomData,
        }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.inner.id
    }

    fn runtime(&self) -> Runtime {
        Runtime::from_parts(self.inner.session.clone(), self.binding.clone())
    }
}

impl<T: DeserializeOwned + Send + 'static> IntoFuture for ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.runtime().get(&self).await })
    }
}

/// Arguments of one call, with the references they keep alive until the call is submitted.
#[derive(Default)]
pub struct ArgList {
    pub(crate) args: Vec<Arg>,
    pub(crate) keep: Vec<Arc<RefInner>>,
    pub(crate) error: Option<Error>,
}

impl ArgList {
    /// An empty list.
    pub fn new() -> Self {
        ArgList::default()
    }
}

/// Something that can be passed where a `T` argument is expected: a `T`, or an `ObjectRef<T>`.
pub trait IntoArg<T> {
    /// Appends the argument.
    fn push_to(self, list: &mut ArgList);
}

impl<T: Serialize + 'static> IntoArg<T> for T {
    fn push_to(self, list: &mut ArgList) {
        match codec::encode(&self) {
            Ok(b) => list.args.push(Arg {
                kind: Some(arg::Kind::Value(b)),
            }),
            Err(e) => {
                list.error.get_or_insert(e);
            }
        }
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn push_to(self, list: &mut ArgList) {
        list.args.push(Arg {
            kind: Some(arg::Kind::Object(self.inner.id.0)),
        });
        list.keep.push(self.inner);
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn push_to(self, list: &mut ArgList) {
        list.args.push(Arg {
            kind: Some(arg::Kind::Object(self.inner.id.0)),
        });
        list.keep.push(self.inner.clone());
    }
}
