//! Lazy task graphs: `f.delayed(args…)` on any `#[flotilla::remote]` function makes a node
//! instead of a task; [`Delayed::compute`] submits the whole graph at once (each shared node
//! once, nodes nothing asked for never), [`Delayed::persist`] keeps the result in the cluster,
//! and [`Delayed::to_dot`] draws the graph as Graphviz text.

use std::{
    collections::HashMap,
    fmt::Write as _,
    marker::PhantomData,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use super::progress;
use crate::{
    codec::{self, Blob},
    driver::{
        object_ref::{ArgList, IntoArg, ObjectRef},
        Runtime,
    },
    error::{Error, Result},
};

/// One call in a graph.
pub struct Node {
    id: u64,
    name: &'static str,
    signature: &'static str,
    args: Vec<NodeArg>,
}

/// An argument of a node: a value, a reference to an object, or another node's result.
pub enum NodeArg {
    /// An encoded value.
    Value(Bytes),
    /// A value that could not be encoded: the graph fails with this when computed.
    Invalid(String),
    /// An object in the cluster.
    Object(ObjectRef<()>),
    /// The result of another node.
    Node(Arc<Node>),
}

/// The lazy result of a remote function: a node of a task graph.
pub struct Delayed<T> {
    node: Arc<Node>,
    _value: PhantomData<fn() -> T>,
}

impl<T> Clone for Delayed<T> {
    fn clone(&self) -> Self {
        Delayed {
            node: self.node.clone(),
            _value: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Delayed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Delayed({}#{})", self.node.name, self.node.id)
    }
}

/// What may stand for a `T` argument of a delayed call: a `T`, an `ObjectRef<T>` or a
/// `Delayed<T>`.
pub trait IntoDelayed<T> {
    /// The node argument.
    fn into_node_arg(self) -> NodeArg;
}

impl<T: Serialize + 'static> IntoDelayed<T> for T {
    fn into_node_arg(self) -> NodeArg {
        match codec::encode(&self) {
            Ok(b) => NodeArg::Value(b),
            Err(e) => NodeArg::Invalid(e.to_string()),
        }
    }
}

impl<T> IntoDelayed<T> for Delayed<T> {
    fn into_node_arg(self) -> NodeArg {
        NodeArg::Node(self.node)
    }
}

impl<T> IntoDelayed<T> for &Delayed<T> {
    fn into_node_arg(self) -> NodeArg {
        NodeArg::Node(self.node.clone())
    }
}

impl<T> IntoDelayed<T> for ObjectRef<T> {
    fn into_node_arg(self) -> NodeArg {
        NodeArg::Object(ObjectRef::new(self.inner, self.binding))
    }
}

impl<T> IntoDelayed<T> for &ObjectRef<T> {
    fn into_node_arg(self) -> NodeArg {
        NodeArg::Object(ObjectRef::new(self.inner.clone(), self.binding.clone()))
    }
}

static NEXT_NODE: AtomicU64 = AtomicU64::new(1);

impl<T> Delayed<T> {
    /// A node calling the registered function `name`; used by the code `#[flotilla::remote]`
    /// generates.
    pub fn call(name: &'static str, signature: &'static str, args: Vec<NodeArg>) -> Self {
        Delayed {
            node: Arc::new(Node {
                id: NEXT_NODE.fetch_add(1, Ordering::Relaxed),
                name,
                signature,
                args,
            }),
            _value: PhantomData,
        }
    }

    /// Submits the graph this node needs and returns a reference to its result, which stays
    /// in the cluster.
    pub fn persist(&self, rt: &Runtime) -> Result<ObjectRef<T>> {
        let mut graph = Submitted::default();
        let r = graph.submit(rt, &self.node)?;
        Ok(ObjectRef::new(r.inner, r.binding))
    }

    /// Runs the graph and returns the value.
    pub async fn compute(&self, rt: &Runtime) -> Result<T>
    where
        T: DeserializeOwned + 'static,
    {
        let mut graph = Submitted::default();
        let r = graph.submit(rt, &self.node)?;
        progress::watch(rt, "delayed", &graph.refs()).await?;
        rt.get(&ObjectRef::<T>::new(r.inner, r.binding)).await
    }

    /// The graph as Graphviz DOT text: one box per call, edges from arguments to calls.
    pub fn to_dot(&self) -> String {
        to_dot(std::slice::from_ref(&self.node))
    }

    /// How many tasks computing this node submits (each shared node counted once).
    pub fn task_count(&self) -> usize {
        let mut seen = HashMap::new();
        walk(&self.node, &mut seen);
        seen.len()
    }
}

/// Computes several nodes of one graph together: what they share runs once.
pub async fn compute_all<T: DeserializeOwned + 'static>(
    rt: &Runtime,
    nodes: &[Delayed<T>],
) -> Result<Vec<T>> {
    let mut graph = Submitted::default();
    let mut refs = Vec::with_capacity(nodes.len());
    for n in nodes {
        let r = graph.submit(rt, &n.node)?;
        refs.push(ObjectRef::<T>::new(r.inner, r.binding));
    }
    progress::watch(rt, "delayed", &graph.refs()).await?;
    rt.get_all(&refs).await
}

/// The nodes of one graph submitted so far, by node id.
#[derive(Default)]
struct Submitted {
    done: HashMap<u64, ObjectRef<()>>,
}

impl Submitted {
    fn refs(&self) -> Vec<ObjectRef<()>> {
        self.done.values().cloned().collect()
    }

    /// Submits `node` after its arguments (depth first, each node once).
    fn submit(&mut self, rt: &Runtime, node: &Arc<Node>) -> Result<ObjectRef<()>> {
        if let Some(r) = self.done.get(&node.id) {
            return Ok(r.clone());
        }
        let mut list = ArgList::new();
        for arg in &node.args {
            match arg {
                NodeArg::Value(b) => IntoArg::<Blob>::push_to(Blob(b.clone()), &mut list),
                NodeArg::Invalid(e) => {
                    return Err(Error::Invalid(format!(
                        "an argument of {} cannot be encoded: {e}",
                        node.name
                    )))
                }
                NodeArg::Object(r) => IntoArg::<()>::push_to(r, &mut list),
                NodeArg::Node(n) => {
                    let r = self.submit(rt, n)?;
                    IntoArg::<()>::push_to(&r, &mut list);
                }
            }
        }
        let r: ObjectRef<()> = rt.call_function(node.name, node.signature, list, None);
        self.done.insert(node.id, r.clone());
        Ok(r)
    }
}

fn walk<'a>(node: &'a Arc<Node>, seen: &mut HashMap<u64, &'a Arc<Node>>) {
    if seen.insert(node.id, node).is_some() {
        return;
    }
    for arg in &node.args {
        if let NodeArg::Node(n) = arg {
            walk(n, seen);
        }
    }
}

fn to_dot(roots: &[Arc<Node>]) -> String {
    let mut seen = HashMap::new();
    for r in roots {
        walk(r, &mut seen);
    }
    let mut ids: Vec<_> = seen.keys().copied().collect();
    ids.sort_unstable();
    let mut out = String::from("digraph {\n  rankdir=BT;\n");
    for id in ids {
        let node = seen[&id];
        let short = node.name.rsplit("::").next().unwrap_or(node.name);
        let _ = writeln!(out, "  n{id} [shape=box, label=\"{short} #{id}\"];");
        for (i, arg) in node.args.iter().enumerate() {
            match arg {
                NodeArg::Node(n) => {
                    let _ = writeln!(out, "  n{} -> n{id};", n.id);
                }
                NodeArg::Object(r) => {
                    let _ = writeln!(out, "  o{id}_{i} [shape=ellipse, label=\"{}\"];", r.id());
                    let _ = writeln!(out, "  o{id}_{i} -> n{id};");
                }
                NodeArg::Value(_) | NodeArg::Invalid(_) => {}
            }
        }
    }
    out.push_str("}\n");
    out
}
