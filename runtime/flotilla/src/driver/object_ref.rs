//! [`ObjectRef`]: a typed reference to a value that a task will produce (or was put), and
//! [`IntoArg`], which lets a call take either a value or a reference for each argument.
//!
//! A reference may also travel inside an argument value (a `Vec` of them, a struct holding
//! one): it encodes as its id, the encoder notes it, and the call lists it as a nested
//! dependency, which the task waits for and holds until it ends, as Ray's borrowed references.
//! The task decodes it as a reference it may read but does not own.
//!
//! A reference inside a value that is put, or that a task returns, is held by that value: the
//! session reports it to the head as contained in the value's object ([`encode_result`], `put`),
//! and the head keeps it until that object is freed. A `get` decodes such references as
//! borrowed ones that keep the value's object alive while they live.

use std::{
    cell::RefCell,
    collections::HashMap,
    future::{Future, IntoFuture},
    marker::PhantomData,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
};

use bytes::Bytes;
use flotilla_core::ObjectId;
use flotilla_proto::v1::{arg, Arg};
use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize, Serializer};

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
    /// For a reference decoded from a value: the value's object, which holds this one at the
    /// head, kept alive as long as this reference is.
    pub(crate) _parent: Option<Arc<RefInner>>,
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

    /// The same reference, read as another type (a collection task's result seen as the
    /// bytes its next task takes).
    pub(crate) fn retyped<U>(&self) -> ObjectRef<U> {
        ObjectRef::new(self.inner.clone(), self.binding.clone())
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

thread_local! {
    /// The references met while encoding an argument, when a call is collecting them.
    static NESTED: RefCell<Option<Vec<Arc<RefInner>>>> = const { RefCell::new(None) };
    /// The runtime that decodes references inside a value, with the object the value is (none
    /// for a task's arguments, which the task holds).
    static DECODING: RefCell<Option<(Runtime, Option<Arc<RefInner>>)>> = const { RefCell::new(None) };
}

/// Runs `encode`, returning also the references it serialized.
pub(crate) fn collecting_nested<R>(encode: impl FnOnce() -> R) -> (R, Vec<Arc<RefInner>>) {
    let outer = NESTED.with(|n| n.borrow_mut().replace(Vec::new()));
    let out = encode();
    let found = NESTED.with(|n| std::mem::replace(&mut *n.borrow_mut(), outer));
    (out, found.unwrap_or_default())
}

/// Runs `decode` with `rt` decoding the references inside values (as borrowed references).
pub(crate) fn decoding_with<R>(rt: &Runtime, decode: impl FnOnce() -> R) -> R {
    decoding_within(rt, None, decode)
}

/// Runs `decode` with `rt` decoding the references inside the value of `parent`: each keeps
/// `parent` alive, since the head holds them for as long as it lives.
pub(crate) fn decoding_within<R>(
    rt: &Runtime,
    parent: Option<Arc<RefInner>>,
    decode: impl FnOnce() -> R,
) -> R {
    let outer = DECODING.with(|d| d.borrow_mut().replace((rt.clone(), parent)));
    let out = decode();
    DECODING.with(|d| *d.borrow_mut() = outer);
    out
}

/// The borrowed references decoded in each session, by object: tasks running at once that
/// borrow one object share one handle, so the first to finish does not drop what this
/// session knows of the object while another still waits on it.
type Borrowed = HashMap<(usize, ObjectId), Weak<RefInner>>;
static BORROWED: Mutex<Option<Borrowed>> = Mutex::new(None);

fn borrowed<T>(rt: &Runtime, id: ObjectId, parent: &Option<Arc<RefInner>>) -> ObjectRef<T> {
    let session = Arc::as_ptr(&rt.session) as usize;
    let mut map = BORROWED.lock().unwrap_or_else(|e| e.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    if let Some(inner) = map.get(&(session, id)).and_then(Weak::upgrade) {
        return ObjectRef::new(inner, rt.binding.clone());
    }
    let r: ObjectRef<T> = rt.borrowed_ref(id, parent.clone());
    if map.len() >= 1024 {
        map.retain(|_, w| w.strong_count() > 0);
    }
    map.insert((session, id), Arc::downgrade(&r.inner));
    r
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        NESTED.with(|n| {
            if let Some(found) = n.borrow_mut().as_mut() {
                found.push(self.inner.clone());
            }
        });
        s.serialize_u64(self.inner.id.0)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let id = ObjectId(u64::deserialize(d)?);
        DECODING.with(|rt| match rt.borrow().as_ref() {
            Some((rt, parent)) => Ok(borrowed(rt, id, parent)),
            None => Err(serde::de::Error::custom(format!(
                "object reference {id} inside a value decoded outside a runtime: decode it \
                 with Runtime::get, or as a task's argument"
            ))),
        })
    }
}

/// Encodes a task's result. The references inside it are noted on the task's binding, and
/// the result reports them to the head, which holds them as long as the result lives; the
/// handles this session has to them are released only after the head was told, on the same
/// stream. Used by the generated code.
pub fn encode_result<T: Serialize + 'static>(rt: &Runtime, value: &T) -> Result<Bytes> {
    let (encoded, found) = collecting_nested(|| codec::encode(value));
    let encoded = encoded?;
    if found.is_empty() {
        return Ok(encoded);
    }
    let Some(binding) = &rt.binding else {
        return Err(Error::Codec(format!(
            "a {} holding object references can only be the result of a remote function run \
             as a task, not of an actor method: return the values, or return the references \
             from a remote function",
            std::any::type_name::<T>()
        )));
    };
    let ids = rt.session.report_contained(binding.task, &found);
    binding
        .contained
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(ids);
    Ok(encoded)
}

/// Arguments of one call, with the references they keep alive until the call is submitted.
#[derive(Default)]
pub struct ArgList {
    pub(crate) args: Vec<Arg>,
    pub(crate) keep: Vec<Arc<RefInner>>,
    /// Objects referenced inside argument values.
    pub(crate) nested: Vec<u64>,
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
        let (encoded, nested) = collecting_nested(|| codec::encode(&self));
        match encoded {
            Ok(b) => list.args.push(Arg {
                kind: Some(arg::Kind::Value(b)),
            }),
            Err(e) => {
                list.error.get_or_insert(e);
            }
        }
        for r in nested {
            list.nested.push(r.id.0);
            list.keep.push(r);
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
