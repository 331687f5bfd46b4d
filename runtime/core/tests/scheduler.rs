//! Drives the scheduler state machine directly and checks the effects it emits.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use flotilla_core::{Effect, ObjectId, Scheduler, SessionId, WorkerId, WorkerInfo};
use flotilla_proto::v1::{
    self as pb, arg, object_state, resolved_arg, task_error::Kind, task_result, task_spec,
    worker_command::Command, TaskError, TaskSpec,
};

// ---------------------------------------------------------------------------------- builders

const SIG: &str = "fn(i64) -> i64";

/// A worker registering functions `f` and `g` and the actor class `Counter`.
fn worker(name: &str, slots: u32) -> WorkerInfo {
    WorkerInfo {
        name: name.into(),
        address: format!("http://{name}:7100"),
        node: format!("node-{name}"),
        slots,
        functions: [("f", SIG), ("g", SIG)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        classes: [("Counter".to_string(), "fn() -> Counter".to_string())]
            .into_iter()
            .collect(),
        program: "demo".into(),
        build_id: "b1".into(),
        ..WorkerInfo::default()
    }
}

/// A scheduler with `prefetch`, one session and the named workers (`(name, slots)`).
fn setup(prefetch: u32, workers: &[(&str, u32)]) -> (Scheduler, SessionId, Vec<WorkerId>) {
    let mut s = Scheduler::new(prefetch);
    let sess = s.open_session(None);
    let ws = workers
        .iter()
        .map(|(n, slots)| s.add_worker(worker(n, *slots)).unwrap())
        .collect();
    assert!(s.drain_effects().is_empty());
    (s, sess, ws)
}

fn oid(s: SessionId, n: u64) -> ObjectId {
    ObjectId::new(s, n)
}

fn obj(id: ObjectId) -> pb::Arg {
    pb::Arg {
        kind: Some(arg::Kind::Object(id.0)),
    }
}

fn val(v: &[u8]) -> pb::Arg {
    pb::Arg {
        kind: Some(arg::Kind::Value(Bytes::copy_from_slice(v))),
    }
}

fn options(max_retries: i32) -> Option<pb::TaskOptions> {
    Some(pb::TaskOptions {
        max_retries,
        resources: None,
        name: String::new(),
    })
}

/// A call of a remote function with the default retries.
fn task(id: ObjectId, function: &str, args: Vec<pb::Arg>) -> TaskSpec {
    TaskSpec {
        task: id.0,
        args,
        options: options(-1),
        signature: String::new(),
        nested: Vec::new(),
        kind: Some(task_spec::Kind::Function(function.into())),
    }
}

fn with_retries(mut spec: TaskSpec, max_retries: i32) -> TaskSpec {
    spec.options = options(max_retries);
    spec
}

fn create(id: ObjectId, max_restarts: i32, name: &str, detached: bool) -> TaskSpec {
    TaskSpec {
        task: id.0,
        args: Vec::new(),
        options: options(-1),
        signature: String::new(),
        nested: Vec::new(),
        kind: Some(task_spec::Kind::CreateActor(pb::ActorCreate {
            class: "Counter".into(),
            max_restarts,
            name: name.into(),
            detached,
        })),
    }
}

fn call(id: ObjectId, actor: ObjectId, method: &str, args: Vec<pb::Arg>) -> TaskSpec {
    TaskSpec {
        task: id.0,
        args,
        options: options(-1),
        signature: String::new(),
        nested: Vec::new(),
        kind: Some(task_spec::Kind::ActorCall(pb::ActorCall {
            actor: actor.0,
            method: method.into(),
        })),
    }
}

fn put_stored(size: u64, on: &[WorkerId]) -> pb::put_object::Value {
    pb::put_object::Value::Stored(pb::StoredObject {
        size,
        locations: on
            .iter()
            .map(|w| pb::ObjectLocation {
                worker: w.0,
                ..pb::ObjectLocation::default()
            })
            .collect(),
    })
}

fn inline(id: ObjectId, attempt: u32, v: &[u8]) -> pb::TaskResult {
    pb::TaskResult {
        task: id.0,
        attempt,
        outcome: Some(task_result::Outcome::InlineValue(Bytes::copy_from_slice(v))),
        run_micros: LONG_RUN_MICROS,
        contained: Vec::new(),
    }
}

fn stored(id: ObjectId, attempt: u32, size: u64) -> pb::TaskResult {
    pb::TaskResult {
        task: id.0,
        attempt,
        outcome: Some(task_result::Outcome::StoredSize(size)),
        run_micros: LONG_RUN_MICROS,
        contained: Vec::new(),
    }
}

fn failed(id: ObjectId, attempt: u32, kind: Kind, message: &str) -> pb::TaskResult {
    pb::TaskResult {
        task: id.0,
        attempt,
        outcome: Some(task_result::Outcome::Error(TaskError {
            kind: kind as i32,
            task: String::new(),
            message: message.into(),
        })),
        run_micros: LONG_RUN_MICROS,
        contained: Vec::new(),
    }
}

/// A run time long enough that the scheduler keeps the default prefetch.
const LONG_RUN_MICROS: u64 = 50_000;

// ---------------------------------------------------------------------------------- effects

/// The `Run` commands, in order.
fn runs(effects: &[Effect]) -> Vec<(WorkerId, pb::Dispatch)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ToWorker(w, Command::Run(d)) => Some((*w, d.clone())),
            _ => None,
        })
        .collect()
}

/// The tasks run, in order, with their workers.
fn run_ids(effects: &[Effect]) -> Vec<(WorkerId, ObjectId)> {
    runs(effects)
        .into_iter()
        .map(|(w, d)| (w, ObjectId(d.spec.unwrap().task)))
        .collect()
}

/// Commands other than `Run`.
fn commands(effects: &[Effect]) -> Vec<(WorkerId, Command)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ToWorker(_, Command::Run(_)) => None,
            Effect::ToWorker(w, c) => Some((*w, c.clone())),
            _ => None,
        })
        .collect()
}

/// Object states sent to `session`.
fn states(effects: &[Effect], session: SessionId) -> Vec<(ObjectId, object_state::State)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ToSession(s, st) if *s == session => {
                Some((ObjectId(st.object), st.state.clone().unwrap()))
            }
            _ => None,
        })
        .collect()
}

fn state_of(effects: &[Effect], session: SessionId, id: ObjectId) -> object_state::State {
    let found: Vec<_> = states(effects, session)
        .into_iter()
        .filter(|(o, _)| *o == id)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one state of {id} for {session:?} in {effects:#?}"
    );
    found.into_iter().next().unwrap().1
}

fn error_of(effects: &[Effect], session: SessionId, id: ObjectId) -> TaskError {
    match state_of(effects, session, id) {
        object_state::State::Error(e) => e,
        other => panic!("expected an error for {id}, got {other:?}"),
    }
}

fn assert_error(
    effects: &[Effect],
    session: SessionId,
    id: ObjectId,
    kind: Kind,
    contains: &[&str],
) -> TaskError {
    let e = error_of(effects, session, id);
    assert_eq!(e.kind, kind as i32, "kind of {e:?}");
    for c in contains {
        assert!(
            e.message.contains(c),
            "{:?} does not contain {c:?}",
            e.message
        );
    }
    e
}

fn value_of(effects: &[Effect], session: SessionId, id: ObjectId) -> Bytes {
    match state_of(effects, session, id) {
        object_state::State::InlineValue(b) => b,
        other => panic!("expected an inline value for {id}, got {other:?}"),
    }
}

fn stored_at(effects: &[Effect], session: SessionId, id: ObjectId) -> Vec<u32> {
    match state_of(effects, session, id) {
        object_state::State::Stored(s) => s.locations.iter().map(|l| l.worker).collect(),
        other => panic!("expected a stored object for {id}, got {other:?}"),
    }
}

/// The drains that finished: worker, message, and whether the worker emptied by itself.
fn drained(effects: &[Effect]) -> Vec<(WorkerId, String, pb::DrainOutcome)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Drained {
                worker,
                message,
                outcome,
            } => Some((*worker, message.clone(), *outcome)),
            _ => None,
        })
        .collect()
}

fn free(w: WorkerId, id: ObjectId) -> (WorkerId, Command) {
    (w, Command::Free(id.0))
}

// ---------------------------------------------------------------------------------- placement

#[test]
fn fills_slots_plus_prefetch_then_keeps_queue_order() {
    let (mut s, sess, ws) = setup(1, &[("w1", 2)]);
    let ids: Vec<ObjectId> = (1..=5).map(|n| oid(sess, n)).collect();
    for (n, id) in ids.iter().enumerate() {
        s.submit(sess, task(*id, "f", vec![val(&[n as u8])]));
    }
    let fx = s.drain_effects();
    let placed = runs(&fx);
    assert_eq!(
        run_ids(&fx),
        vec![(ws[0], ids[0]), (ws[0], ids[1]), (ws[0], ids[2])]
    );
    assert_eq!(
        placed[1].1.args,
        vec![pb::ResolvedArg {
            kind: Some(resolved_arg::Kind::Value(Bytes::from_static(&[1])))
        }]
    );
    assert_eq!(placed[0].1.attempt, 0);
    let snap = s.snapshot();
    assert_eq!(
        (
            snap.tasks_running,
            snap.tasks_pending,
            snap.slots_busy,
            snap.slots_free
        ),
        (3, 2, 2, 0)
    );

    s.task_finished(ws[0], inline(ids[1], 0, b"one"));
    let fx = s.drain_effects();
    assert_eq!(value_of(&fx, sess, ids[1]), Bytes::from_static(b"one"));
    assert_eq!(
        run_ids(&fx),
        vec![(ws[0], ids[3])],
        "the oldest queued task goes first"
    );
    s.task_finished(ws[0], inline(ids[0], 0, b"zero"));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], ids[4])]);
    assert_eq!(s.snapshot().tasks_finished, 2);
}

#[test]
fn short_functions_get_a_deep_pipeline_and_long_ones_do_not() {
    let (mut s, sess, ws) = setup(1, &[("w1", 2)]);
    // The first run of "f" is short: from then on a worker may hold 32 per slot of it.
    let first = oid(sess, 1);
    s.submit(sess, task(first, "f", vec![]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], first)]);
    let mut quick = inline(first, 0, b"");
    quick.run_micros = 20;
    s.task_finished(ws[0], quick);
    s.drain_effects();
    for n in 2..=100 {
        s.submit(sess, task(oid(sess, n), "f", vec![]));
    }
    assert_eq!(
        run_ids(&s.drain_effects()).len(),
        2 + 64,
        "slots plus 32 per slot of prefetch"
    );
    // A long function keeps the default prefetch of 1 beyond the slots.
    let (mut s, sess, ws) = setup(1, &[("w1", 2)]);
    let first = oid(sess, 1);
    s.submit(sess, task(first, "g", vec![]));
    s.drain_effects();
    s.task_finished(ws[0], inline(first, 0, b""));
    s.drain_effects();
    for n in 2..=100 {
        s.submit(sess, task(oid(sess, n), "g", vec![]));
    }
    assert_eq!(run_ids(&s.drain_effects()).len(), 3);
    assert_eq!(s.snapshot().tasks_pending, 96);
}

#[test]
fn spreads_tasks_over_workers_with_free_slots() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let (a, b, c) = (oid(sess, 1), oid(sess, 2), oid(sess, 3));
    for id in [a, b, c] {
        s.submit(sess, task(id, "f", vec![]));
    }
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], a), (ws[1], b)]);
    assert_eq!(s.snapshot().tasks_pending, 1);
    s.task_finished(ws[1], inline(b, 0, b""));
    assert_eq!(
        run_ids(&s.drain_effects()),
        vec![(ws[1], c)],
        "c goes where a slot freed up"
    );
}

#[test]
fn nothing_is_dispatched_without_workers() {
    let mut s = Scheduler::new(2);
    let sess = s.open_session(None);
    let (a, b) = (oid(sess, 1), oid(sess, 2));
    s.submit(sess, task(a, "f", vec![]));
    s.submit(sess, task(b, "g", vec![]));
    assert!(s.drain_effects().is_empty());
    let snap = s.snapshot();
    assert_eq!(
        (snap.tasks_pending, snap.tasks_running, snap.desired_workers),
        (2, 0, 2)
    );
    let w = s.add_worker(worker("w1", 1)).unwrap();
    assert_eq!(run_ids(&s.drain_effects()), vec![(w, a), (w, b)]);
}

#[test]
fn unknown_function_fails_naming_it_and_the_workers_program() {
    let (mut s, sess, _) = setup(2, &[("w1", 1)]);
    let id = oid(sess, 1);
    s.submit(sess, task(id, "nope", vec![]));
    let fx = s.drain_effects();
    assert!(runs(&fx).is_empty());
    let e = assert_error(
        &fx,
        sess,
        id,
        Kind::UnknownFunction,
        &["nope", "demo (build b1)"],
    );
    assert_eq!(e.task, "nope");
    assert_eq!(s.snapshot().tasks_failed, 1);

    // Queued before any worker registered: checked when the first one arrives.
    let mut s = Scheduler::new(2);
    let sess = s.open_session(None);
    let (bad, good) = (oid(sess, 1), oid(sess, 2));
    s.submit(sess, task(bad, "missing_fn", vec![]));
    s.submit(sess, task(good, "f", vec![]));
    let w = s.add_worker(worker("w1", 1)).unwrap();
    let fx = s.drain_effects();
    assert_error(
        &fx,
        sess,
        bad,
        Kind::UnknownFunction,
        &["missing_fn", "demo (build b1)"],
    );
    assert_eq!(run_ids(&fx), vec![(w, good)]);
}

#[test]
fn signature_mismatch_fails_with_type_mismatch() {
    let (mut s, sess, ws) = setup(2, &[("w1", 1)]);
    let (bad, good) = (oid(sess, 1), oid(sess, 2));
    let mut spec = task(bad, "f", vec![]);
    spec.signature = "fn(String) -> i64".into();
    s.submit(sess, spec);
    let fx = s.drain_effects();
    assert!(runs(&fx).is_empty());
    assert_error(
        &fx,
        sess,
        bad,
        Kind::TypeMismatch,
        &["fn(String) -> i64", SIG],
    );

    let mut spec = task(good, "f", vec![]);
    spec.signature = SIG.into();
    s.submit(sess, spec);
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], good)]);
}

// ---------------------------------------------------------------------------------- dependencies

#[test]
fn dependent_waits_then_gets_the_inline_value() {
    let (mut s, sess, ws) = setup(2, &[("w1", 2)]);
    let (a, b) = (oid(sess, 1), oid(sess, 2));
    s.submit(sess, task(a, "f", vec![]));
    s.submit(sess, task(b, "g", vec![obj(a), val(b"x")]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], a)]);
    assert_eq!(
        (s.snapshot().tasks_waiting, s.snapshot().tasks_running),
        (1, 1)
    );

    s.task_finished(ws[0], inline(a, 0, b"42"));
    let fx = s.drain_effects();
    let placed = runs(&fx);
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].1.spec.as_ref().unwrap().task, b.0);
    let args: Vec<_> = placed[0]
        .1
        .args
        .iter()
        .map(|a| a.kind.clone().unwrap())
        .collect();
    assert_eq!(
        args,
        vec![
            resolved_arg::Kind::Value(Bytes::from_static(b"42")),
            resolved_arg::Kind::Value(Bytes::from_static(b"x"))
        ]
    );
    assert_eq!(s.snapshot().tasks_waiting, 0);
}

#[test]
fn failed_dependency_fails_the_dependent() {
    let (mut s, sess, ws) = setup(2, &[("w1", 2)]);
    let (a, b, c) = (oid(sess, 1), oid(sess, 2), oid(sess, 3));
    s.submit(sess, task(a, "f", vec![]));
    s.submit(sess, task(b, "g", vec![obj(a)]));
    s.drain_effects();
    s.task_finished(ws[0], failed(a, 0, Kind::Application, "boom"));
    let fx = s.drain_effects();
    assert_eq!(error_of(&fx, sess, a).kind, Kind::Application as i32);
    assert_error(&fx, sess, b, Kind::DependencyFailed, &["boom"]);
    assert!(runs(&fx).is_empty());
    assert_eq!(
        (s.snapshot().tasks_failed, s.snapshot().tasks_waiting),
        (2, 0)
    );

    // Passing an object that already failed fails the new task too (and must not dispatch it).
    s.submit(sess, task(c, "g", vec![obj(a)]));
    let fx = s.drain_effects();
    assert!(runs(&fx).is_empty());
    assert_error(&fx, sess, c, Kind::DependencyFailed, &["boom"]);
}

#[test]
fn task_goes_where_its_stored_argument_is() {
    let (mut s, sess, ws) = setup(0, &[("w1", 4), ("w2", 1)]);
    let (x, a, b) = (oid(sess, 1), oid(sess, 2), oid(sess, 3));
    s.put(sess, x, put_stored(1 << 20, &[ws[1]]));
    assert_eq!(stored_at(&s.drain_effects(), sess, x), vec![ws[1].0]);

    s.submit(sess, task(a, "f", vec![obj(x)]));
    let fx = s.drain_effects();
    let placed = runs(&fx);
    assert_eq!(placed.len(), 1);
    assert_eq!(
        placed[0].0, ws[1],
        "w2 holds the argument, although w1 has more free slots"
    );
    match placed[0].1.args[0].kind.clone().unwrap() {
        resolved_arg::Kind::Stored(r) => {
            assert_eq!(r.object, x.0);
            let at = r.r#where.unwrap().locations;
            assert_eq!(
                (at[0].worker, at[0].address.as_str()),
                (ws[1].0, "http://w2:7100")
            );
        }
        other => panic!("expected a stored ref, got {other:?}"),
    }
    // w2 is full now: the next one goes to w1 rather than waiting.
    s.submit(sess, task(b, "f", vec![obj(x)]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], b)]);
}

// ---------------------------------------------------------------------------------- results

#[test]
fn results_reach_owner_and_subscribers() {
    let (mut s, sess, ws) = setup(2, &[("w1", 1)]);
    let other = s.open_session(None);
    let a = oid(sess, 1);
    s.submit(sess, task(a, "f", vec![]));
    s.subscribe(other, a);
    let fx = s.drain_effects();
    assert!(states(&fx, sess).is_empty() && states(&fx, other).is_empty());

    s.task_finished(ws[0], inline(a, 0, b"v"));
    let fx = s.drain_effects();
    assert_eq!(value_of(&fx, sess, a), Bytes::from_static(b"v"));
    assert_eq!(value_of(&fx, other, a), Bytes::from_static(b"v"));

    // Ready: answered at once.
    let third = s.open_session(None);
    s.subscribe(third, a);
    assert_eq!(
        value_of(&s.drain_effects(), third, a),
        Bytes::from_static(b"v")
    );

    // Unknown: an OBJECT_LOST error.
    let ghost = oid(sess, 99);
    s.subscribe(third, ghost);
    assert_error(
        &s.drain_effects(),
        third,
        ghost,
        Kind::ObjectLost,
        &["does not exist"],
    );
}

// ---------------------------------------------------------------------------------- worker loss

#[test]
fn lost_tasks_are_retried_until_retries_run_out() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1), ("w3", 1)]);
    let a = oid(sess, 1);
    s.submit(sess, with_retries(task(a, "f", vec![]), 1));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], a)]);

    s.worker_lost(ws[0]);
    let fx = s.drain_effects();
    let placed = runs(&fx);
    assert_eq!(placed.len(), 1);
    assert_eq!((placed[0].0, placed[0].1.attempt), (ws[1], 1));
    assert!(states(&fx, sess).is_empty());
    assert_eq!(s.snapshot().tasks_retried, 1);

    s.worker_lost(ws[1]);
    let fx = s.drain_effects();
    assert!(runs(&fx).is_empty(), "no retries left: {fx:?}");
    assert_error(
        &fx,
        sess,
        a,
        Kind::WorkerDied,
        &["w2", "no retries were left"],
    );
    let snap = s.snapshot();
    assert_eq!(
        (snap.tasks_retried, snap.tasks_failed, snap.tasks_running),
        (1, 1, 0)
    );
}

/// A worker that exits to stop a cancelled task (it says so first): its other running tasks are
/// retried without using up their retries, even a task that has none.
#[test]
fn a_worker_exiting_for_a_forced_cancel_spares_its_other_tasks_retries() {
    let (mut s, sess, mut ws) = setup(0, &[("w1", 2)]);
    let stuck = oid(sess, 1);
    let bystander = oid(sess, 2);
    s.submit(sess, task(stuck, "f", vec![]));
    s.submit(sess, with_retries(task(bystander, "g", vec![]), 0));
    let placed = run_ids(&s.drain_effects());
    assert!(
        placed.contains(&(ws[0], stuck)) && placed.contains(&(ws[0], bystander)),
        "{placed:?}"
    );

    ws.push(s.add_worker(worker("w2", 1)).unwrap());
    s.cancel(sess, stuck);
    s.drain_effects();
    s.worker_exiting(ws[0]);
    s.worker_lost(ws[0]);
    let fx = s.drain_effects();
    let placed = runs(&fx);
    assert_eq!(placed.len(), 1, "only the bystander runs again: {fx:?}");
    assert_eq!(
        (
            placed[0].0,
            ObjectId(placed[0].1.spec.as_ref().unwrap().task),
            placed[0].1.attempt
        ),
        (ws[1], bystander, 1)
    );
    assert!(states(&fx, sess).is_empty(), "nothing failed: {fx:?}");

    // A worker that just dies uses them up: the bystander has none left.
    s.worker_lost(ws[1]);
    assert_error(
        &s.drain_effects(),
        sess,
        bystander,
        Kind::WorkerDied,
        &["no retries were left"],
    );
}

#[test]
fn stale_results_from_an_earlier_attempt_are_ignored() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let a = oid(sess, 1);
    s.submit(sess, task(a, "f", vec![]));
    s.drain_effects();
    s.worker_lost(ws[0]);
    assert_eq!(runs(&s.drain_effects())[0].1.attempt, 1);

    s.task_finished(ws[0], inline(a, 0, b"old")); // the dead worker
    s.task_finished(ws[1], inline(a, 0, b"old")); // the right worker, the wrong attempt
    assert!(s.drain_effects().is_empty());
    assert_eq!(s.snapshot().tasks_running, 1);

    s.task_finished(ws[1], inline(a, 1, b"new"));
    assert_eq!(
        value_of(&s.drain_effects(), sess, a),
        Bytes::from_static(b"new")
    );
    assert_eq!(s.snapshot().tasks_finished, 1);
}

#[test]
fn lost_stored_object_is_rebuilt_from_lineage() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let a = oid(sess, 1);
    s.submit(sess, task(a, "f", vec![val(b"seed")]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], a)]);
    s.task_finished(ws[0], stored(a, 0, 4096));
    assert_eq!(stored_at(&s.drain_effects(), sess, a), vec![ws[0].0]);

    s.worker_lost(ws[0]);
    let fx = s.drain_effects();
    let placed = runs(&fx);
    assert_eq!(placed.len(), 1);
    assert_eq!(
        (placed[0].0, placed[0].1.spec.as_ref().unwrap().task),
        (ws[1], a.0)
    );
    assert_eq!(
        placed[0].1.args[0].kind,
        Some(resolved_arg::Kind::Value(Bytes::from_static(b"seed")))
    );
    assert_eq!(s.snapshot().tasks_retried, 1);

    s.task_finished(ws[1], stored(a, placed[0].1.attempt, 4096));
    assert_eq!(stored_at(&s.drain_effects(), sess, a), vec![ws[1].0]);
}

#[test]
fn task_using_a_lost_object_waits_for_its_rebuild() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let (a, b) = (oid(sess, 1), oid(sess, 2));
    s.submit(sess, task(a, "f", vec![]));
    s.drain_effects();
    s.task_finished(ws[0], stored(a, 0, 4096));
    s.submit(sess, task(b, "g", vec![obj(a)]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], b)], "locality");

    // b is retried, but its argument went with w1: a is rebuilt first.
    s.worker_lost(ws[0]);
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[1], a)]);
    assert_eq!(s.snapshot().tasks_waiting, 1);

    s.task_finished(ws[1], stored(a, 0, 4096));
    let fx = s.drain_effects();
    let placed = runs(&fx);
    assert_eq!(placed.len(), 1);
    assert_eq!((placed[0].0, placed[0].1.attempt), (ws[1], 1));
    match placed[0].1.args[0].kind.clone().unwrap() {
        resolved_arg::Kind::Stored(r) => {
            assert_eq!(r.r#where.unwrap().locations[0].worker, ws[1].0)
        }
        other => panic!("expected a stored ref, got {other:?}"),
    }
}

#[test]
fn lost_put_object_fails_with_object_lost() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let (x, b) = (oid(sess, 1), oid(sess, 2));
    s.put(sess, x, put_stored(100, &[ws[0]]));
    s.submit(sess, task(b, "g", vec![obj(x)]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], b)]);

    s.worker_lost(ws[0]);
    let fx = s.drain_effects();
    assert_error(&fx, sess, x, Kind::ObjectLost, &["w1", "cannot be rebuilt"]);
    assert!(runs(&fx).is_empty());
    assert_error(&fx, sess, b, Kind::DependencyFailed, &["cannot be rebuilt"]);
    assert_eq!(s.snapshot().tasks_running + s.snapshot().tasks_pending, 0);
}

// ---------------------------------------------------------------------------------- references

#[test]
fn releasing_the_last_reference_frees_every_copy() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let x = oid(sess, 1);
    s.put(sess, x, put_stored(100, &[ws[0], ws[1]]));
    s.drain_effects();
    assert_eq!(s.snapshot().objects, 1);
    let stranger = s.open_session(None);
    s.release(stranger, x); // not the owner
    assert!(s.drain_effects().is_empty());
    s.release(sess, x);
    assert_eq!(
        commands(&s.drain_effects()),
        vec![free(ws[0], x), free(ws[1], x)]
    );
    assert_eq!(s.snapshot().objects, 0);
    s.release(sess, x);
    assert!(s.drain_effects().is_empty());
}

#[test]
fn object_needed_by_a_queued_task_outlives_its_release() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let (x, blocker, b) = (oid(sess, 1), oid(sess, 2), oid(sess, 3));
    s.put(sess, x, put_stored(100, &[ws[0]]));
    s.submit(sess, task(blocker, "f", vec![]));
    s.submit(sess, task(b, "g", vec![obj(x)]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], blocker)]);

    s.release(sess, x);
    assert!(commands(&s.drain_effects()).is_empty(), "b still needs x");
    s.task_finished(ws[0], inline(blocker, 0, b""));
    let fx = s.drain_effects();
    assert_eq!(run_ids(&fx), vec![(ws[0], b)]);
    assert!(matches!(
        runs(&fx)[0].1.args[0].kind,
        Some(resolved_arg::Kind::Stored(_))
    ));
    assert!(commands(&fx).is_empty());

    s.task_finished(ws[0], inline(b, 0, b"done"));
    let fx = s.drain_effects();
    assert!(
        commands(&fx).is_empty(),
        "b's result pins x as its lineage: {fx:?}"
    );
    s.release(sess, b);
    assert_eq!(commands(&s.drain_effects()), vec![free(ws[0], x)]);
    assert_eq!(s.snapshot().objects, 1, "only the blocker's result is left");
}

#[test]
fn objects_referenced_inside_values_are_waited_for_and_held() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let (x, producer, b) = (oid(sess, 1), oid(sess, 2), oid(sess, 3));
    s.put(sess, x, put_stored(100, &[ws[0]]));
    s.submit(sess, task(producer, "f", vec![]));
    // b's only argument is a value that refers to x and to producer's result.
    let mut spec = task(b, "g", vec![val(b"refs")]);
    spec.nested = vec![x.0, producer.0];
    s.submit(sess, spec);
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], producer)]);
    assert_eq!(s.snapshot().tasks_waiting, 1, "b waits for producer");

    s.release(sess, x);
    assert!(commands(&s.drain_effects()).is_empty(), "b holds x");
    s.task_finished(ws[0], inline(producer, 0, b"7"));
    let fx = s.drain_effects();
    assert_eq!(run_ids(&fx), vec![(ws[0], b)]);
    let dispatched = &runs(&fx)[0].1;
    assert_eq!(dispatched.args.len(), 1, "nested objects are not arguments");
    assert_eq!(
        dispatched.spec.as_ref().unwrap().nested,
        vec![x.0, producer.0]
    );

    s.task_finished(ws[0], inline(b, 0, b"done"));
    s.drain_effects();
    // Released b: its lineage no longer pins x, which nothing else holds.
    s.release(sess, b);
    assert_eq!(commands(&s.drain_effects()), vec![free(ws[0], x)]);
    s.release(sess, producer);
    s.drain_effects();
    assert_eq!(s.snapshot().objects, 0, "nothing leaks");
}

#[test]
fn objects_referenced_inside_a_result_live_as_long_as_the_result() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let before = s.snapshot().objects;
    let t = oid(sess, 1);
    s.submit(sess, task(t, "f", vec![]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], t)]);
    // The task puts two objects through its worker's session and returns refs to both: the
    // worker reports them as contained in t's result, then drops its own handles.
    let wsess = s.open_session(Some("w1".into()));
    let (a, b) = (oid(wsess, 1), oid(wsess, 2));
    s.put(wsess, a, put_stored(100, &[ws[0]]));
    s.put(
        wsess,
        b,
        pb::put_object::Value::InlineValue(Bytes::from_static(b"b")),
    );
    s.contained(t, [a, b, a]);
    s.release(wsess, a);
    s.release(wsess, b);
    assert!(commands(&s.drain_effects()).is_empty(), "t holds a and b");
    s.task_finished(ws[0], inline(t, 0, b"[a, b]"));
    s.drain_effects();
    // Reported again (the task ran again after a retry): still one hold each.
    s.contained(t, [a, b]);

    // The driver, holding only t, reads a and b through it.
    s.subscribe(sess, a);
    s.subscribe(sess, b);
    let fx = s.drain_effects();
    assert_eq!(stored_at(&fx, sess, a), vec![ws[0].0]);
    assert_eq!(value_of(&fx, sess, b), Bytes::from_static(b"b"));
    assert_eq!(s.snapshot().objects, before + 3);

    // Dropping t releases what it contained, and nothing leaks.
    s.release(sess, t);
    assert_eq!(commands(&s.drain_effects()), vec![free(ws[0], a)]);
    assert_eq!(s.snapshot().objects, before, "nothing leaks");
}

#[test]
fn objects_referenced_inside_a_put_value_live_as_long_as_it() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let (x, y, gone) = (oid(sess, 1), oid(sess, 2), oid(sess, 3));
    s.put(sess, x, put_stored(100, &[ws[0]]));
    s.put(
        sess,
        y,
        pb::put_object::Value::InlineValue(Bytes::from_static(b"[x]")),
    );
    // A reference to an object freed already is skipped; y itself is never its own holder.
    s.contained(y, [x, gone, y]);
    s.release(sess, x);
    assert!(commands(&s.drain_effects()).is_empty(), "y holds x");
    s.subscribe(sess, x);
    assert_eq!(stored_at(&s.drain_effects(), sess, x), vec![ws[0].0]);
    s.release(sess, y);
    assert_eq!(commands(&s.drain_effects()), vec![free(ws[0], x)]);
    assert_eq!(s.snapshot().objects, 0, "nothing leaks");
    // A report about an object freed already changes nothing.
    s.contained(y, [x]);
    assert_eq!(s.snapshot().objects, 0);
}

// ---------------------------------------------------------------------------------- sessions

#[test]
fn closing_a_session_cancels_its_work_kills_its_actors_and_frees_its_objects() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let other = s.open_session(None);
    let (actor, keeper) = (oid(sess, 1), oid(sess, 2));
    s.submit(sess, create(actor, 0, "", false));
    s.submit(sess, create(keeper, 0, "keeper", true));
    let created = run_ids(&s.drain_effects());
    assert_eq!(created.len(), 2);
    let home: HashMap<ObjectId, WorkerId> = created.iter().map(|(w, id)| (*id, *w)).collect();
    s.task_finished(home[&actor], inline(actor, 0, b""));
    s.task_finished(home[&keeper], inline(keeper, 0, b""));
    let x = oid(sess, 3);
    s.put(sess, x, put_stored(100, &[ws[0]]));
    let (r1, r2, queued) = (oid(sess, 4), oid(sess, 5), oid(sess, 6));
    for id in [r1, r2, queued] {
        s.submit(sess, task(id, "f", vec![]));
    }
    let fx = s.drain_effects();
    let running: HashMap<ObjectId, WorkerId> =
        run_ids(&fx).into_iter().map(|(w, id)| (id, w)).collect();
    assert_eq!(running.len(), 2);
    assert_eq!(s.snapshot().tasks_pending, 1);

    s.close_session(sess);
    let fx = s.drain_effects();
    assert!(states(&fx, sess).is_empty(), "the session is gone");
    assert!(
        runs(&fx).is_empty(),
        "the queued task was cancelled, not run"
    );
    let cmds = commands(&fx);
    assert!(
        cmds.contains(&(running[&r1], Command::Cancel(r1.0))),
        "{cmds:?}"
    );
    assert!(
        cmds.contains(&(running[&r2], Command::Cancel(r2.0))),
        "{cmds:?}"
    );
    assert!(
        cmds.contains(&(home[&actor], Command::KillActor(actor.0))),
        "{cmds:?}"
    );
    assert!(
        !cmds.iter().any(|c| c.1 == Command::KillActor(keeper.0)),
        "detached actors stay"
    );
    assert!(cmds.contains(&free(ws[0], x)), "{cmds:?}");
    let snap = s.snapshot();
    assert_eq!(
        (
            snap.sessions,
            snap.tasks_pending,
            snap.actors_alive,
            snap.actors_dead
        ),
        (1, 0, 1, 1)
    );

    s.lookup_actor(other, 7, "keeper");
    match s.drain_effects().as_slice() {
        [Effect::ActorFound(to, found)] => {
            assert_eq!(*to, other);
            assert_eq!((found.actor, found.error.as_str()), (keeper.0, ""));
        }
        fx => panic!("unexpected {fx:?}"),
    }
}

// ---------------------------------------------------------------------------------- actors

/// Creates a `Counter` on the worker it is placed on and returns that worker.
fn create_actor(
    s: &mut Scheduler,
    sess: SessionId,
    id: ObjectId,
    max_restarts: i32,
    name: &str,
) -> WorkerId {
    s.submit(sess, create(id, max_restarts, name, false));
    let placed = runs(&s.drain_effects());
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].1.restarts, 0);
    s.task_finished(placed[0].0, inline(id, 0, b""));
    let fx = s.drain_effects();
    assert_eq!(value_of(&fx, sess, id), Bytes::new());
    placed[0].0
}

#[test]
fn actor_calls_are_dispatched_in_order_after_creation() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let (actor, c1, c2) = (oid(sess, 1), oid(sess, 2), oid(sess, 3));
    s.submit(sess, create(actor, 0, "", false));
    s.submit(sess, call(c1, actor, "incr", vec![]));
    s.submit(sess, call(c2, actor, "get", vec![]));
    let fx = s.drain_effects();
    assert_eq!(
        run_ids(&fx),
        vec![(ws[0], actor)],
        "calls wait for the creation"
    );
    assert_eq!(s.snapshot().actors_restarting, 1);

    s.task_finished(ws[0], inline(actor, 0, b""));
    let fx = s.drain_effects();
    assert_eq!(run_ids(&fx), vec![(ws[0], c1), (ws[0], c2)]);
    assert_eq!(s.snapshot().actors_alive, 1);
    s.task_finished(ws[0], inline(c1, 0, b"1"));
    assert_eq!(
        value_of(&s.drain_effects(), sess, c1),
        Bytes::from_static(b"1")
    );
}

#[test]
fn actor_calls_queue_behind_a_call_whose_argument_is_not_ready() {
    let (mut s, sess, ws) = setup(2, &[("w1", 1)]);
    let actor = oid(sess, 1);
    create_actor(&mut s, sess, actor, 0, "");
    let (a, c1, c2) = (oid(sess, 2), oid(sess, 3), oid(sess, 4));
    s.submit(sess, task(a, "f", vec![]));
    s.submit(sess, call(c1, actor, "add", vec![obj(a)]));
    s.submit(sess, call(c2, actor, "get", vec![]));
    assert_eq!(
        run_ids(&s.drain_effects()),
        vec![(ws[0], a)],
        "c2 must not overtake c1"
    );

    s.task_finished(ws[0], inline(a, 0, b"5"));
    let fx = s.drain_effects();
    assert_eq!(run_ids(&fx), vec![(ws[0], c1), (ws[0], c2)]);
    assert_eq!(
        runs(&fx)[0].1.args[0].kind,
        Some(resolved_arg::Kind::Value(Bytes::from_static(b"5")))
    );
}

#[test]
fn actor_restarts_on_worker_death_until_max_restarts() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1), ("w3", 1)]);
    let actor = oid(sess, 1);
    let first = create_actor(&mut s, sess, actor, 1, "");
    assert_eq!(first, ws[0]);
    let c1 = oid(sess, 2);
    s.submit(sess, call(c1, actor, "incr", vec![]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(first, c1)]);

    s.worker_lost(first);
    let fx = s.drain_effects();
    assert_error(&fx, sess, c1, Kind::ActorDied, &["w1"]);
    let placed = runs(&fx);
    assert_eq!(placed.len(), 1, "{fx:?}");
    assert_eq!(placed[0].1.spec.as_ref().unwrap().task, actor.0);
    assert_eq!(placed[0].1.restarts, 1);
    let second = placed[0].0;
    assert_ne!(second, first);
    assert_eq!(s.snapshot().actors_restarting, 1);

    let c2 = oid(sess, 3);
    s.submit(sess, call(c2, actor, "incr", vec![]));
    assert!(
        runs(&s.drain_effects()).is_empty(),
        "not before the actor is back"
    );
    s.task_finished(second, inline(actor, placed[0].1.attempt, b""));
    assert_eq!(run_ids(&s.drain_effects()), vec![(second, c2)]);

    s.worker_lost(second);
    let fx = s.drain_effects();
    assert_error(&fx, sess, c2, Kind::ActorDied, &[]);
    assert!(runs(&fx).is_empty(), "out of restarts: {fx:?}");
    let snap = s.snapshot();
    assert_eq!(
        (snap.actors_alive, snap.actors_restarting, snap.actors_dead),
        (0, 0, 1)
    );

    let c3 = oid(sess, 4);
    s.submit(sess, call(c3, actor, "incr", vec![]));
    assert_error(
        &s.drain_effects(),
        sess,
        c3,
        Kind::ActorDied,
        &["max_restarts=1", "Counter"],
    );
}

#[test]
fn actor_whose_creation_is_lost_without_restarts_left_stays_dead() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let actor = oid(sess, 1);
    s.submit(sess, create(actor, 0, "", false));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], actor)]);
    s.worker_lost(ws[0]);
    let fx = s.drain_effects();
    assert!(
        runs(&fx).is_empty(),
        "a dead actor must not be created again: {fx:?}"
    );
    assert_error(&fx, sess, actor, Kind::ActorDied, &["max_restarts=0"]);
    let snap = s.snapshot();
    assert_eq!(
        (snap.actors_dead, snap.tasks_pending, snap.tasks_running),
        (1, 0, 0)
    );

    // With restarts left, the creation is dispatched once more, as a restart.
    let second = oid(sess, 2);
    s.submit(sess, create(second, 2, "", false));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[1], second)]);
    let w3 = s.add_worker(worker("w3", 1)).unwrap();
    s.worker_lost(ws[1]);
    let fx = s.drain_effects();
    let placed = runs(&fx);
    assert_eq!(placed.len(), 1);
    assert_eq!(
        (placed[0].0, placed[0].1.restarts, placed[0].1.attempt),
        (w3, 1, 0)
    );
    let snap = s.snapshot();
    assert_eq!(
        (snap.tasks_running, snap.tasks_pending, snap.tasks_retried),
        (1, 0, 0)
    );
}

#[test]
fn named_actors_are_found_and_names_are_unique() {
    let (mut s, sess, _) = setup(2, &[("w1", 2)]);
    let other = s.open_session(None);
    let actor = oid(sess, 1);
    let w = create_actor(&mut s, sess, actor, 0, "counter");
    s.lookup_actor(other, 11, "counter");
    assert_eq!(
        s.drain_effects(),
        vec![Effect::ActorFound(
            other,
            pb::ActorFound {
                request: 11,
                actor: actor.0,
                class: "Counter".into(),
                error: String::new(),
                location: Some(pb::ActorLocation {
                    worker: w.0,
                    address: "http://w1:7100".into(),
                    node: "node-w1".into(),
                    incarnation: 0,
                }),
            }
        )]
    );

    let dup = oid(other, 1);
    s.submit(other, create(dup, 0, "counter", false));
    let fx = s.drain_effects();
    assert!(runs(&fx).is_empty());
    assert_error(
        &fx,
        other,
        dup,
        Kind::Invalid,
        &["\"counter\"", "already exists"],
    );

    s.lookup_actor(other, 12, "nobody");
    match s.drain_effects().as_slice() {
        [Effect::ActorFound(_, found)] => {
            assert_eq!((found.request, found.actor), (12, 0));
            assert!(found.error.contains("nobody"), "{}", found.error);
        }
        fx => panic!("unexpected {fx:?}"),
    }
}

#[test]
fn dropping_the_last_handle_kills_the_actor() {
    let (mut s, sess, _) = setup(2, &[("w1", 2)]);
    let actor = oid(sess, 1);
    let home = create_actor(&mut s, sess, actor, 3, "");
    s.release(sess, actor);
    let fx = s.drain_effects();
    assert_eq!(commands(&fx), vec![(home, Command::KillActor(actor.0))]);
    let snap = s.snapshot();
    assert_eq!((snap.actors_alive, snap.actors_dead), (0, 1));
    let c = oid(sess, 2);
    s.submit(sess, call(c, actor, "get", vec![]));
    assert_error(
        &s.drain_effects(),
        sess,
        c,
        Kind::ActorDied,
        &["every handle to it was dropped"],
    );
}

#[test]
fn actor_call_whose_argument_fetch_failed_fails_instead_of_running_out_of_order() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let actor = oid(sess, 1);
    let home = create_actor(&mut s, sess, actor, 0, "");
    let x = oid(sess, 2);
    s.put(sess, x, put_stored(100, &[ws[1]]));
    let c = oid(sess, 3);
    s.submit(sess, call(c, actor, "add", vec![obj(x)]));
    let later = oid(sess, 4);
    s.submit(sess, call(later, actor, "add", vec![val(b"1")]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(home, c), (home, later)]);

    // Later calls may have run already: running `c` again would break the caller's order.
    s.task_finished(home, failed(c, 0, Kind::ObjectLost, "fetch of x failed"));
    let fx = s.drain_effects();
    assert!(run_ids(&fx).is_empty(), "{fx:?}");
    let err = error_of(&fx, sess, c);
    assert_eq!(err.kind, Kind::ObjectLost as i32);
    assert!(err.message.contains("fetch of x failed"), "{}", err.message);
    s.task_finished(home, inline(later, 0, b"ok"));
    assert_eq!(
        value_of(&s.drain_effects(), sess, later),
        Bytes::from_static(b"ok")
    );
}

#[test]
fn ids_minted_by_another_session_are_refused() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let other = s.open_session(None);
    let x = oid(sess, 1);
    s.put(sess, x, put_stored(100, &[ws[0]]));
    s.drain_effects();
    // Another session may neither overwrite x nor create objects in sess's id space.
    s.put(other, x, put_stored(5, &[ws[0]]));
    s.submit(other, task(oid(sess, 2), "f", vec![]));
    let fx = s.drain_effects();
    assert_eq!(error_of(&fx, other, x).kind, Kind::Invalid as i32);
    assert_eq!(
        error_of(&fx, other, oid(sess, 2)).kind,
        Kind::Invalid as i32
    );
    assert!(run_ids(&fx).is_empty());
    s.subscribe(sess, x);
    assert_eq!(stored_at(&s.drain_effects(), sess, x), vec![ws[0].0]);
}

// ---------------------------------------------------------------------------------- drain

#[test]
fn drain_copies_sole_objects_and_reports_drained_when_empty() {
    let (mut s, sess, ws) = setup(0, &[("w1", 2), ("w2", 2)]);
    let (only_w1, both, t) = (oid(sess, 1), oid(sess, 2), oid(sess, 3));
    s.put(sess, only_w1, put_stored(100, &[ws[0]]));
    s.put(sess, both, put_stored(100, &[ws[0], ws[1]]));
    s.submit(sess, task(t, "f", vec![]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], t)]);

    let now = Instant::now();
    s.drain(ws[0], now, Duration::from_secs(60));
    let fx = s.drain_effects();
    match commands(&fx).as_slice() {
        [(to, Command::Copy(c))] => {
            assert_eq!((*to, c.object), (ws[1], only_w1.0));
            assert_eq!(c.from.as_ref().unwrap().locations[0].worker, ws[0].0);
        }
        cmds => panic!("expected one copy, got {cmds:?}"),
    }
    assert!(drained(&fx).is_empty());
    assert_eq!(s.snapshot().workers_draining, 1);

    let (u, v) = (oid(sess, 4), oid(sess, 5));
    s.submit(sess, task(u, "f", vec![]));
    s.submit(sess, task(v, "f", vec![]));
    assert_eq!(
        run_ids(&s.drain_effects()),
        vec![(ws[1], u), (ws[1], v)],
        "nothing new on w1"
    );

    s.task_finished(ws[0], inline(t, 0, b""));
    assert!(
        drained(&s.drain_effects()).is_empty(),
        "the copy is not confirmed yet"
    );
    s.stored_copy(ws[1], only_w1);
    let fx = s.drain_effects();
    assert_eq!(drained(&fx).len(), 1);
    assert_eq!(drained(&fx)[0].0, ws[0]);
    assert!(drained(&fx)[0].1.contains("no running tasks"));
    assert_eq!(
        drained(&fx)[0].2,
        pb::DrainOutcome::Drained,
        "it emptied by itself"
    );
}

#[test]
fn drain_copies_results_made_while_draining() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let t = oid(sess, 1);
    s.submit(sess, task(t, "f", vec![]));
    s.drain_effects();
    s.drain(ws[0], Instant::now(), Duration::from_secs(60));
    assert!(s.drain_effects().is_empty());

    s.task_finished(ws[0], stored(t, 0, 100));
    let fx = s.drain_effects();
    assert_eq!(stored_at(&fx, sess, t), vec![ws[0].0]);
    assert!(drained(&fx).is_empty());
    assert!(
        matches!(commands(&fx).as_slice(), [(to, Command::Copy(c))] if *to == ws[1] && c.object == t.0),
        "{fx:?}"
    );
    s.stored_copy(ws[1], t);
    assert_eq!(drained(&s.drain_effects()).len(), 1);
}

#[test]
fn drain_deadline_moves_running_tasks_elsewhere() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let t = oid(sess, 1);
    s.submit(sess, task(t, "f", vec![]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], t)]);
    let now = Instant::now();
    s.drain(ws[0], now, Duration::from_secs(10));
    s.tick(now + Duration::from_secs(5));
    assert!(s.drain_effects().is_empty());

    s.tick(now + Duration::from_secs(10));
    let fx = s.drain_effects();
    assert_eq!(commands(&fx), vec![(ws[0], Command::Cancel(t.0))]);
    let placed = runs(&fx);
    assert_eq!(placed.len(), 1);
    assert_eq!((placed[0].0, placed[0].1.attempt), (ws[1], 1));
    let d = drained(&fx);
    assert_eq!(d.len(), 1);
    assert!(
        d[0].1.contains("deadline") && d[0].1.contains("1 running tasks"),
        "{}",
        d[0].1
    );
    assert_eq!(
        d[0].2,
        pb::DrainOutcome::TimedOut,
        "the deadline passed with tasks running"
    );
    assert_eq!(s.snapshot().tasks_retried, 1);

    // The drained worker's late report is stale.
    s.task_finished(ws[0], inline(t, 0, b"late"));
    assert!(s.drain_effects().is_empty());
    s.task_finished(ws[1], inline(t, 1, b"ok"));
    assert_eq!(
        value_of(&s.drain_effects(), sess, t),
        Bytes::from_static(b"ok")
    );
}

#[test]
fn drain_deadline_ends_a_drain_stuck_on_uncopied_objects() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let x = oid(sess, 1);
    s.put(sess, x, put_stored(100, &[ws[0]]));
    s.drain_effects();
    let now = Instant::now();
    s.drain(ws[0], now, Duration::from_secs(10));
    assert!(s.drain_effects().is_empty(), "no other worker to copy to");
    s.tick(now + Duration::from_secs(11));
    let d = drained(&s.drain_effects());
    assert_eq!(d.len(), 1);
    assert!(d[0].1.contains("1 objects had no copy"), "{}", d[0].1);
    s.tick(now + Duration::from_secs(12));
    assert!(s.drain_effects().is_empty(), "reported once");
}

#[test]
fn duplicate_worker_names_are_refused() {
    let (mut s, _, ws) = setup(0, &[("w1", 1)]);
    let err = s.add_worker(worker("w1", 4)).unwrap_err();
    assert!(
        err.0.contains("\"w1\"") && err.0.contains("already registered"),
        "{}",
        err.0
    );
    assert!(err.0.contains("http://w1:7100"), "{}", err.0);
    assert_eq!(s.workers().len(), 1);
    assert_eq!(s.worker_by_name("w1"), Some(ws[0]));
    assert!(s
        .add_worker(WorkerInfo {
            slots: 0,
            ..worker("w9", 1)
        })
        .is_err());
}

// ---------------------------------------------------------------------------------- cancel, blocking

#[test]
fn cancel_fails_queued_tasks_and_stops_running_ones() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let (running, queued, next) = (oid(sess, 1), oid(sess, 2), oid(sess, 3));
    s.submit(sess, task(running, "f", vec![]));
    s.submit(sess, task(queued, "f", vec![]));
    s.submit(sess, task(next, "f", vec![]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], running)]);

    let stranger = s.open_session(None);
    s.cancel(stranger, queued); // not the owner
    assert!(s.drain_effects().is_empty());

    s.cancel(sess, queued);
    let fx = s.drain_effects();
    assert_error(&fx, sess, queued, Kind::Cancelled, &["cancelled"]);
    assert!(runs(&fx).is_empty());

    s.cancel(sess, running);
    let fx = s.drain_effects();
    assert_eq!(commands(&fx), vec![(ws[0], Command::Cancel(running.0))]);
    assert_error(&fx, sess, running, Kind::Cancelled, &[]);
    assert!(
        runs(&fx).is_empty(),
        "the slot is busy until the worker stops it"
    );

    s.task_finished(ws[0], stored(running, 0, 10));
    let fx = s.drain_effects();
    assert!(
        states(&fx, sess).is_empty(),
        "the late result is dropped: {fx:?}"
    );
    assert_eq!(commands(&fx), vec![free(ws[0], running)]);
    assert_eq!(run_ids(&fx), vec![(ws[0], next)]);
    assert_eq!(s.snapshot().tasks_failed, 2);
}

#[test]
fn blocked_task_lends_its_slot() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let (a, b, c) = (oid(sess, 1), oid(sess, 2), oid(sess, 3));
    s.submit(sess, task(a, "f", vec![]));
    s.submit(sess, task(b, "f", vec![]));
    s.submit(sess, task(c, "f", vec![]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], a)]);
    s.task_blocked(a, true);
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], b)]);
    s.task_blocked(a, false);
    s.task_finished(ws[0], inline(b, 0, b""));
    assert!(
        runs(&s.drain_effects()).is_empty(),
        "the lent slot is back with a"
    );
    s.task_finished(ws[0], inline(a, 0, b""));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], c)]);
}

#[test]
fn tasks_no_worker_can_run_wait_without_holding_up_the_rest() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    // 100 tasks wanting a resource nobody has sit at the front of the queue.
    for n in 1..=100 {
        let mut spec = task(oid(sess, n), "f", vec![]);
        spec.options = Some(pb::TaskOptions {
            max_retries: -1,
            resources: Some(pb::Resources {
                slots: 1,
                custom: [("gpu".to_string(), 1)].into(),
            }),
            name: String::new(),
        });
        s.submit(sess, spec);
    }
    let plain = oid(sess, 101);
    s.submit(sess, task(plain, "f", vec![]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], plain)]);
    assert_eq!(s.snapshot().tasks_pending, 100);
}

#[test]
fn an_actor_killed_while_its_constructor_runs_is_stopped_when_it_comes_up() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let actor = oid(sess, 1);
    s.submit(sess, create(actor, 0, "", false));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], actor)]);
    // Its driver goes away before the constructor finished: the creation is cancelled.
    s.close_session(sess);
    s.drain_effects();
    s.task_finished(ws[0], inline(actor, 0, b""));
    let fx = s.drain_effects();
    assert!(
        commands(&fx).contains(&(ws[0], Command::KillActor(actor.0))),
        "{fx:?}"
    );
    assert_eq!(s.snapshot().actors_alive, 0);
}

// ---------------------------------------------------------------------------------- shared memory

const SEGMENT: &str = "/dev/shm/flotilla-test-segment";

/// A put of `size` bytes on `worker`, which keeps it in the shared-memory segment `shm_path`.
fn put_in_segment(size: u64, worker: WorkerId, shm_path: &str) -> pb::put_object::Value {
    pb::put_object::Value::Stored(pb::StoredObject {
        size,
        locations: vec![pb::ObjectLocation {
            worker: worker.0,
            shm_path: shm_path.into(),
            ..pb::ObjectLocation::default()
        }],
    })
}

/// The locations of a stored object sent to `session`: worker and segment path.
fn segments_at(effects: &[Effect], session: SessionId, id: ObjectId) -> Vec<(u32, String)> {
    match state_of(effects, session, id) {
        object_state::State::Stored(s) => s
            .locations
            .into_iter()
            .map(|l| (l.worker, l.shm_path))
            .collect(),
        other => panic!("expected a stored object for {id}, got {other:?}"),
    }
}

/// The locations of the stored argument `index` of a dispatch: worker and segment path.
fn arg_segments(d: &pb::Dispatch, index: usize) -> Vec<(u32, String)> {
    match d.args[index].kind.clone().unwrap() {
        resolved_arg::Kind::Stored(r) => r
            .r#where
            .unwrap()
            .locations
            .into_iter()
            .map(|l| (l.worker, l.shm_path))
            .collect(),
        other => panic!("expected a stored ref, got {other:?}"),
    }
}

#[test]
fn a_put_segment_reaches_the_tasks_that_take_the_object() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let (x, a) = (oid(sess, 1), oid(sess, 2));
    s.put(sess, x, put_in_segment(1 << 20, ws[0], SEGMENT));
    assert_eq!(
        segments_at(&s.drain_effects(), sess, x),
        vec![(ws[0].0, SEGMENT.to_string())],
        "the owner hears the segment back"
    );

    s.submit(sess, task(a, "f", vec![obj(x)]));
    let placed = runs(&s.drain_effects());
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].0, ws[0], "the task goes where its argument is");
    assert_eq!(
        arg_segments(&placed[0].1, 0),
        vec![(ws[0].0, SEGMENT.to_string())]
    );
}

#[test]
fn a_subscriber_in_another_session_sees_the_segment() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let other = s.open_session(None);
    let x = oid(sess, 1);
    s.put(sess, x, put_in_segment(1 << 20, ws[0], SEGMENT));
    s.drain_effects();

    s.subscribe(other, x);
    assert_eq!(
        segments_at(&s.drain_effects(), other, x),
        vec![(ws[0].0, SEGMENT.to_string())]
    );
}

#[test]
fn a_drain_copy_names_the_segment_to_copy_from() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let x = oid(sess, 1);
    s.put(sess, x, put_in_segment(100, ws[0], SEGMENT));
    s.drain_effects();

    s.drain(ws[0], Instant::now(), Duration::from_secs(60));
    match commands(&s.drain_effects()).as_slice() {
        [(to, Command::Copy(c))] => {
            assert_eq!((*to, c.object), (ws[1], x.0));
            let from = &c.from.as_ref().unwrap().locations;
            assert_eq!(
                (from[0].worker, from[0].shm_path.as_str()),
                (ws[0].0, SEGMENT)
            );
        }
        cmds => panic!("expected one copy, got {cmds:?}"),
    }
}

#[test]
fn the_segment_goes_with_its_worker() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let other = s.open_session(None);
    let (x, a) = (oid(sess, 1), oid(sess, 2));
    s.put(sess, x, put_in_segment(1 << 20, ws[0], SEGMENT));
    // w2 fetched a copy into its own store, which has no segment.
    s.stored_copy(ws[1], x);
    s.subscribe(other, x);
    assert_eq!(
        segments_at(&s.drain_effects(), other, x),
        vec![(ws[0].0, SEGMENT.to_string()), (ws[1].0, String::new())]
    );

    s.worker_lost(ws[0]);
    s.drain_effects();
    s.subscribe(other, x);
    assert_eq!(
        segments_at(&s.drain_effects(), other, x),
        vec![(ws[1].0, String::new())],
        "no location is left that names the segment"
    );
    s.submit(sess, task(a, "f", vec![obj(x)]));
    let placed = runs(&s.drain_effects());
    assert_eq!(placed.len(), 1);
    assert_eq!(
        arg_segments(&placed[0].1, 0),
        vec![(ws[1].0, String::new())]
    );
}

#[test]
fn a_copy_reported_again_keeps_the_segment() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let x = oid(sess, 1);
    s.put(sess, x, put_in_segment(1 << 20, ws[0], SEGMENT));
    s.drain_effects();
    // The putting worker reports the object it already holds, e.g. after a fetch raced the put.
    s.stored_copy(ws[0], x);
    s.subscribe(sess, x);
    assert_eq!(
        segments_at(&s.drain_effects(), sess, x),
        vec![(ws[0].0, SEGMENT.to_string())]
    );
}

#[test]
fn run_counts_by_name_are_bounded_and_unknown_functions_share_one() {
    let (mut s, sess, ws) = setup(2, &[("w1", 1)]);
    // Unknown function names, each different: one series for all of them.
    for n in 1..=50 {
        s.submit(sess, task(oid(sess, n), &format!("nope-{n}"), vec![]));
    }
    s.drain_effects();
    let runs: Vec<(String, u64, u64)> = s
        .runs_by_name()
        .map(|(n, ok, failed)| (n.to_string(), ok, failed))
        .collect();
    assert_eq!(
        runs,
        vec![(flotilla_core::scheduler::UNREGISTERED.to_string(), 0, 50)]
    );

    // Caller-chosen names past the bound share the "other" series.
    let names = flotilla_core::scheduler::MAX_RUN_NAMES + 20;
    for n in 0..names as u64 {
        let id = oid(sess, 1000 + n);
        let mut spec = task(id, "f", vec![]);
        if let Some(o) = spec.options.as_mut() {
            o.name = format!("job-{n}");
        }
        s.submit(sess, spec);
        s.drain_effects();
        s.task_finished(ws[0], inline(id, 0, b"1"));
        s.drain_effects();
    }
    let runs: Vec<(String, u64, u64)> = s
        .runs_by_name()
        .map(|(n, ok, failed)| (n.to_string(), ok, failed))
        .collect();
    assert_eq!(runs.len(), flotilla_core::scheduler::MAX_RUN_NAMES + 1);
    let other = runs
        .iter()
        .find(|(n, _, _)| n == flotilla_core::scheduler::OTHER_RUNS)
        .expect("an other series");
    // The unregistered series took one of the places.
    assert_eq!(other.1, 21);
    assert_eq!(s.snapshot().tasks_finished, names as u64);
}

#[test]
fn the_head_refuses_oversized_inline_values_and_bounds_what_a_session_holds() {
    let (mut s, sess, _) = setup(2, &[("w1", 1)]);
    let inline = |n: usize| pb::put_object::Value::InlineValue(Bytes::from(vec![7u8; n]));
    let max = flotilla_proto::INLINE_MAX_BYTES;

    let big = oid(sess, 1);
    s.put(sess, big, inline(max + 1));
    let e = error_of(&s.drain_effects(), sess, big);
    assert_eq!(e.kind(), Kind::Invalid);
    assert!(e.message.contains("worker's store"), "{}", e.message);

    // Fill the session's budget with values of the largest inline size.
    let fit = flotilla_proto::SESSION_INLINE_BUDGET / max as u64;
    for n in 0..fit {
        s.put(sess, oid(sess, 10 + n), inline(max));
    }
    let fx = s.drain_effects();
    assert!(
        (0..fit).all(|n| matches!(
            state_of(&fx, sess, oid(sess, 10 + n)),
            object_state::State::InlineValue(_)
        )),
        "every put within the budget is kept"
    );
    let over = oid(sess, 10 + fit);
    s.put(sess, over, inline(max));
    let e = error_of(&s.drain_effects(), sess, over);
    assert!(e.message.contains("inline values"), "{}", e.message);

    // Releasing one makes room again; another session has a budget of its own.
    s.release(sess, oid(sess, 10));
    s.drain_effects();
    let again = oid(sess, 20 + fit);
    s.put(sess, again, inline(max));
    assert!(matches!(
        state_of(&s.drain_effects(), sess, again),
        object_state::State::InlineValue(_)
    ));
    let other = s.open_session(None);
    let theirs = oid(other, 1);
    s.put(other, theirs, inline(max));
    assert!(matches!(
        state_of(&s.drain_effects(), other, theirs),
        object_state::State::InlineValue(_)
    ));
}

#[test]
fn a_session_at_its_inline_budget_has_its_results_kept_in_worker_stores() {
    let (mut s, sess, _) = setup(2, &[("w1", 1)]);
    let max = flotilla_proto::INLINE_MAX_BYTES;
    let before = oid(sess, 1);
    s.submit(sess, task(before, "f", vec![]));
    let fx = s.drain_effects();
    assert!(
        !runs(&fx)[0].1.keep_result,
        "under the budget, small results travel inline"
    );

    let fit = flotilla_proto::SESSION_INLINE_BUDGET / max as u64;
    for n in 0..fit {
        let value = pb::put_object::Value::InlineValue(Bytes::from(vec![1u8; max]));
        s.put(sess, oid(sess, 10 + n), value);
    }
    s.drain_effects();
    s.task_finished(runs(&fx)[0].0, inline(before, 0, b"1"));
    let after = oid(sess, 20 + fit);
    s.submit(sess, task(after, "f", vec![]));
    let fx = s.drain_effects();
    let dispatched: Vec<_> = runs(&fx)
        .into_iter()
        .filter(|(_, d)| d.spec.as_ref().is_some_and(|spec| spec.task == after.0))
        .collect();
    assert!(
        dispatched[0].1.keep_result,
        "at the budget, results stay with the worker"
    );

    // Another session is not affected.
    let other = s.open_session(None);
    let theirs = oid(other, 1);
    s.submit(other, task(theirs, "g", vec![]));
    let fx = s.drain_effects();
    let theirs_run: Vec<_> = runs(&fx)
        .into_iter()
        .filter(|(_, d)| d.spec.as_ref().is_some_and(|spec| spec.task == theirs.0))
        .collect();
    assert_eq!(theirs_run.len(), 1, "{fx:?}");
    assert!(!theirs_run[0].1.keep_result);
}

// ---------------------------------------------------------------------------------- head restart

fn held(objects: &[(ObjectId, u64)]) -> pb::HeldObjects {
    pb::HeldObjects {
        objects: objects
            .iter()
            .map(|(id, size)| pb::HeldObject {
                object: id.0,
                size: *size,
                shm_path: String::new(),
            })
            .collect(),
    }
}

/// A restarted head: a worker reports what it holds before the sessions come back; a session
/// that resumes keeps what it names, its stored objects serve as arguments again, the objects it
/// no longer names are freed, and those of a session that never comes back go after the grace.
#[test]
fn a_restarted_head_adopts_reported_objects_for_the_sessions_that_resume() {
    let mut s = Scheduler::new(2);
    let w = s.add_worker(worker("w1", 2)).unwrap();
    let (back, gone) = (SessionId(7), SessionId(9));
    let now = Instant::now();
    s.adopt_objects(
        w,
        held(&[(oid(back, 1), 10), (oid(back, 2), 20), (oid(gone, 1), 30)]),
        now,
    );
    assert!(commands(&s.drain_effects()).is_empty(), "nothing freed yet");

    s.resume_session(back, None, None, vec![oid(back, 1), oid(back, 3)], now)
        .unwrap();
    assert_eq!(
        commands(&s.drain_effects()),
        vec![free(w, oid(back, 2))],
        "the object the session no longer names is freed"
    );
    assert!(
        s.resume_session(back, None, None, Vec::new(), now).is_err(),
        "an open session cannot be resumed twice"
    );
    assert_ne!(
        s.open_session(None),
        back,
        "a new session never takes a resumed id"
    );

    s.subscribe(back, oid(back, 1));
    assert_eq!(stored_at(&s.drain_effects(), back, oid(back, 1)), vec![w.0]);
    // A task submitted again takes the adopted object as its argument, and one that waits for
    // an object not reported yet runs once a worker reports it.
    s.submit(back, task(oid(back, 4), "f", vec![obj(oid(back, 1))]));
    s.submit(back, task(oid(back, 5), "f", vec![obj(oid(back, 3))]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(w, oid(back, 4))]);
    s.adopt_objects(w, held(&[(oid(back, 3), 40)]), now);
    let effects = s.drain_effects();
    assert_eq!(stored_at(&effects, back, oid(back, 3)), vec![w.0]);
    assert_eq!(run_ids(&effects), vec![(w, oid(back, 5))]);

    // The session that never came back: its adopted object goes after the grace.
    s.tick(now + flotilla_core::scheduler::RESUME_GRACE / 2);
    assert!(commands(&s.drain_effects()).is_empty());
    s.tick(now + flotilla_core::scheduler::RESUME_GRACE);
    assert_eq!(commands(&s.drain_effects()), vec![free(w, oid(gone, 1))]);
}

/// An object a resumed session names that no worker reports fails as lost after the grace, with
/// a message that says why; a report for a session that is open and did not name it is freed.
#[test]
fn a_named_object_no_worker_reports_is_lost_after_the_grace() {
    let mut s = Scheduler::new(2);
    let w = s.add_worker(worker("w1", 2)).unwrap();
    let sess = SessionId(3);
    let now = Instant::now();
    s.resume_session(sess, None, None, vec![oid(sess, 1)], now)
        .unwrap();
    s.subscribe(sess, oid(sess, 1));
    s.adopt_objects(w, held(&[(oid(sess, 2), 5)]), now);
    assert_eq!(commands(&s.drain_effects()), vec![free(w, oid(sess, 2))]);
    s.tick(now + flotilla_core::scheduler::RESUME_GRACE);
    assert_error(
        &s.drain_effects(),
        sess,
        oid(sess, 1),
        Kind::ObjectLost,
        &["lost when the head restarted", "no worker reported"],
    );
}

#[test]
fn demand_is_split_by_the_group_that_can_serve_it() {
    let mut s = Scheduler::new(0);
    let sess = s.open_session(None);
    let cpu = s
        .add_worker(WorkerInfo {
            group: "cpu".into(),
            ..worker("c1", 1)
        })
        .unwrap();
    let gpu_worker = WorkerInfo {
        group: "gpu".into(),
        custom: [("gpu".to_string(), 1)].into_iter().collect(),
        ..worker("g1", 1)
    };
    s.add_worker(gpu_worker).unwrap();
    s.drain_effects();
    let with_custom = |mut spec: TaskSpec, resource: &str| {
        spec.options = Some(pb::TaskOptions {
            max_retries: -1,
            resources: Some(pb::Resources {
                slots: 1,
                custom: [(resource.to_string(), 1)].into_iter().collect(),
            }),
            name: String::new(),
        });
        spec
    };
    // Two plain tasks: one runs on the cpu worker (the gpu worker takes the other).
    s.submit(sess, task(oid(sess, 1), "f", vec![]));
    s.submit(sess, task(oid(sess, 2), "f", vec![]));
    // Three more plain tasks wait for any group; two gpu tasks wait for the gpu group; one
    // asks for a resource nobody offers.
    for n in 3..=5 {
        s.submit(sess, task(oid(sess, n), "f", vec![]));
    }
    for n in 6..=7 {
        s.submit(sess, with_custom(task(oid(sess, n), "f", vec![]), "gpu"));
    }
    s.submit(sess, with_custom(task(oid(sess, 8), "f", vec![]), "tpu"));
    let running = run_ids(&s.drain_effects());
    assert_eq!(running.len(), 2, "{running:?}");
    let snap = s.snapshot();
    let on_cpu = running.iter().filter(|(w, _)| *w == cpu).count() as u64;
    assert_eq!(
        snap.demand_by_group.get("cpu").copied().unwrap_or(0),
        on_cpu
    );
    assert_eq!(
        snap.demand_by_group.get("gpu").copied().unwrap_or(0),
        2 - on_cpu,
        "{snap:?}"
    );
    assert_eq!(snap.demand_by_group[""], 0);
    // Pending tasks go by what they ask, whoever offers it now: which group serves them (or
    // that none can) is the operator's call.
    let shape = |slots: u32, resources: &str| {
        snap.pending_by_shape
            .get(&(slots, resources.to_owned()))
            .copied()
    };
    assert_eq!(shape(1, ""), Some(3), "{snap:?}");
    assert_eq!(shape(1, "gpu=1"), Some(2));
    assert_eq!(shape(1, "tpu=1"), Some(1));
    assert_eq!(snap.pending_by_shape.len(), 3);
    assert_eq!(snap.busy_by_group.values().sum::<u64>(), 2);

    // Past the bound, the shapes with the least demand are counted as plain one-slot work.
    let extra = flotilla_core::scheduler::MAX_DEMAND_SHAPES as u64 + 6;
    for n in 0..extra {
        let mut spec = with_custom(task(oid(sess, 100 + n), "f", vec![]), "tpu");
        if let Some(r) = spec.options.as_mut().and_then(|o| o.resources.as_mut()) {
            r.custom.insert("tpu".into(), 2 + n);
        }
        s.submit(sess, spec);
    }
    let snap = s.snapshot();
    assert_eq!(
        snap.pending_by_shape.len(),
        flotilla_core::scheduler::MAX_DEMAND_SHAPES
    );
    assert_eq!(
        snap.pending_by_shape.values().sum::<u64>(),
        3 + 2 + 1 + extra,
        "no demand is lost"
    );
    assert_eq!(snap.pending_by_shape[&(1, String::new())], 3 + 9);
}

// ---------------------------------------------------------------------------------- jobs

#[test]
fn jobs_count_their_tasks_and_cancelling_one_stops_only_its_work() {
    let (mut s, other, ws) = setup(0, &[("w1", 4)]);
    let job = s.open_job_session(None, Some("job-a".into()));
    let (t1, t2, t3) = (oid(job, 1), oid(job, 2), oid(job, 3));
    s.submit(job, task(t1, "f", vec![val(b"1")]));
    s.submit(job, task(t2, "f", vec![val(b"2")]));
    s.submit(job, create(t3, 0, "", true));
    let unrelated = oid(other, 1);
    s.submit(other, task(unrelated, "f", vec![val(b"3")]));
    s.drain_effects();
    s.task_finished(ws[0], inline(t1, 0, b"ok"));
    s.task_finished(ws[0], inline(t3, 0, b""));
    s.drain_effects();
    let view = &s.jobs()[0];
    assert_eq!(
        (
            view.job.as_str(),
            view.tasks_submitted,
            view.tasks_finished,
            view.tasks_failed
        ),
        ("job-a", 3, 2, 0)
    );
    assert_eq!((view.tasks_live, view.drivers), (1, 1));

    let done = s.cancel_job("job-a");
    assert_eq!((done.sessions, done.tasks, done.actors), (1, 1, 1));
    let effects = s.drain_effects();
    let stopped = commands(&effects);
    assert!(
        stopped.contains(&(ws[0], Command::Cancel(t2.0))),
        "{stopped:?}"
    );
    assert!(
        stopped.contains(&(ws[0], Command::KillActor(t3.0))),
        "{stopped:?}"
    );
    assert!(!stopped.contains(&(ws[0], Command::Cancel(unrelated.0))));
    assert_error(&effects, job, t2, Kind::Cancelled, &["job-a"]);
    // The job's driver may not start anything more; a new attempt's session may.
    let late = oid(job, 4);
    s.submit(job, task(late, "f", vec![val(b"4")]));
    assert_error(
        &s.drain_effects(),
        job,
        late,
        Kind::Cancelled,
        &["job job-a was cancelled"],
    );
    let again = s.open_job_session(None, Some("job-a".into()));
    s.submit(again, task(oid(again, 1), "f", vec![val(b"5")]));
    assert_eq!(run_ids(&s.drain_effects()), [(ws[0], oid(again, 1))]);
    let view = &s.jobs()[0];
    assert_eq!((view.tasks_submitted, view.tasks_failed), (4, 1));
}

/// A task submitted by a running task through its worker's session counts for the running
/// task's job, and cancelling the job cancels it too; once the parent is cancelled, what it still
/// submits is refused.
#[test]
fn tasks_submitted_by_a_jobs_tasks_count_for_the_job_and_are_cancelled_with_it() {
    let (mut s, other, ws) = setup(0, &[("w1", 4)]);
    let job = s.open_job_session(None, Some("job-a".into()));
    let from_worker = s.open_session(Some("w1".into()));
    let parent = oid(job, 1);
    s.submit(job, task(parent, "f", vec![]));
    assert_eq!(run_ids(&s.drain_effects()), [(ws[0], parent)]);
    let child = |n: u64| task(oid(from_worker, n), "g", vec![]);
    let (done_child, live_child) = (oid(from_worker, 1), oid(from_worker, 2));
    s.submit_for(from_worker, child(1), Some(parent));
    s.submit_for(from_worker, child(2), Some(parent));
    // A task of another session (no job) that names the job's task as parent from a driver's
    // session does not count for the job.
    s.submit_for(other, task(oid(other, 1), "g", vec![]), Some(parent));
    s.drain_effects();
    s.task_finished(ws[0], inline(done_child, 0, b"ok"));
    s.drain_effects();
    let view = &s.jobs()[0];
    assert_eq!(
        (
            view.tasks_submitted,
            view.tasks_finished,
            view.tasks_failed,
            view.tasks_live
        ),
        (3, 1, 0, 2),
        "the parent and its two children: {view:?}"
    );

    let done = s.cancel_job("job-a");
    assert_eq!(done.tasks, 2, "the parent and its running child: {done:?}");
    let effects = s.drain_effects();
    let stopped = commands(&effects);
    assert!(
        stopped.contains(&(ws[0], Command::Cancel(parent.0))),
        "{stopped:?}"
    );
    assert!(
        stopped.contains(&(ws[0], Command::Cancel(live_child.0))),
        "{stopped:?}"
    );
    assert!(!stopped.contains(&(ws[0], Command::Cancel(oid(other, 1).0))));
    assert_error(
        &effects,
        from_worker,
        live_child,
        Kind::Cancelled,
        &["job-a"],
    );

    // The parent's thread runs on until it returns or its worker exits: what it submits now is
    // refused.
    let late = oid(from_worker, 3);
    s.submit_for(from_worker, child(3), Some(parent));
    assert_error(
        &s.drain_effects(),
        from_worker,
        late,
        Kind::Cancelled,
        &["was cancelled"],
    );
    // Live until the worker reports the cancelled runs stopped.
    assert_eq!(s.jobs()[0].tasks_live, 2);
    for t in [parent, live_child] {
        s.task_finished(ws[0], failed(t, 0, Kind::Cancelled, "cancelled"));
    }
    s.drain_effects();
    let view = &s.jobs()[0];
    assert_eq!(
        (view.tasks_submitted, view.tasks_failed, view.tasks_live),
        (3, 2, 0),
        "{view:?}"
    );
}

#[test]
fn jobs_kept_are_bounded_and_connected_ones_stay() {
    let mut s = Scheduler::new(0);
    let live = s.open_job_session(None, Some("live".into()));
    for n in 0..flotilla_core::scheduler::MAX_JOBS + 10 {
        let id = s.open_job_session(None, Some(format!("old-{n}")));
        s.close_session(id);
    }
    let jobs = s.jobs();
    assert_eq!(jobs.len(), flotilla_core::scheduler::MAX_JOBS);
    assert!(jobs.iter().any(|j| j.job == "live" && j.drivers == 1));
    assert!(!jobs.iter().any(|j| j.job == "old-0"));
    s.close_session(live);
}

#[test]
fn undrain_takes_a_draining_worker_back_and_cancels_its_drain() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let t = oid(sess, 1);
    s.submit(sess, task(t, "f", vec![]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], t)]);
    s.drain(ws[0], Instant::now(), Duration::from_secs(60));
    assert!(drained(&s.drain_effects()).is_empty());
    let (u, v) = (oid(sess, 2), oid(sess, 3));
    s.submit(sess, task(u, "f", vec![]));
    s.submit(sess, task(v, "f", vec![]));
    assert_eq!(
        run_ids(&s.drain_effects()),
        vec![(ws[1], u)],
        "nothing new on w1"
    );

    let reply = s.undrain("w1").unwrap();
    assert_eq!(reply.previous(), pb::WorkerState::Draining);
    let fx = s.drain_effects();
    assert_eq!(
        drained(&fx)
            .iter()
            .map(|(w, _, o)| (*w, *o))
            .collect::<Vec<_>>(),
        vec![(ws[0], pb::DrainOutcome::Cancelled)],
        "the pending drain ends as cancelled"
    );
    assert_eq!(s.snapshot().workers_draining, 0);
    // Nothing was lost: its running task finishes there and the queued one goes there next.
    s.task_finished(ws[0], inline(t, 0, b"t"));
    let fx = s.drain_effects();
    assert_eq!(value_of(&fx, sess, t), Bytes::from_static(b"t"));
    assert_eq!(run_ids(&fx), vec![(ws[0], v)]);
    assert!(drained(&fx).is_empty(), "no drain is pending any more");
}

#[test]
fn undrain_takes_a_drained_worker_back_and_refuses_unknown_names() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 1)]);
    let kept = oid(sess, 1);
    s.put(sess, kept, put_stored(100, &[ws[0]]));
    s.drain(ws[0], Instant::now(), Duration::from_secs(60));
    s.drain_effects();
    s.stored_copy(ws[1], kept);
    assert_eq!(drained(&s.drain_effects()).len(), 1);

    let reply = s.undrain("w1").unwrap();
    assert_eq!(reply.previous(), pb::WorkerState::Drained);
    assert!(drained(&s.drain_effects()).is_empty());
    let (a, b) = (oid(sess, 2), oid(sess, 3));
    s.submit(sess, task(a, "f", vec![]));
    s.submit(sess, task(b, "f", vec![]));
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], a), (ws[1], b)]);

    let again = s.undrain("w1").unwrap();
    assert_eq!(again.previous(), pb::WorkerState::Busy);
    assert!(again.message.contains("not draining"), "{}", again.message);

    let err = s.undrain("nobody").unwrap_err();
    assert!(
        err.to_string().contains("no worker named \"nobody\""),
        "{err}"
    );
    assert!(
        s.drain_effects().is_empty(),
        "a refused undrain changes nothing"
    );
}

/// Where an actor lives, asked by id: its worker and its life, which moves on with a restart.
#[test]
fn an_actor_is_located_by_id_with_its_incarnation() {
    let (mut s, sess, ws) = setup(2, &[("w1", 2), ("w2", 2)]);
    let actor = oid(sess, 1);
    let first = create_actor(&mut s, sess, actor, 1, "");
    let locate = |s: &mut Scheduler, request: u64| {
        s.locate_actor(
            sess,
            &pb::LookupActor {
                request,
                name: String::new(),
                actor: actor.0,
            },
        );
        match s.drain_effects().as_slice() {
            [Effect::ActorFound(to, found)] => {
                assert_eq!((*to, found.request, found.actor), (sess, request, actor.0));
                found.location.clone()
            }
            fx => panic!("unexpected {fx:?}"),
        }
    };
    let at = locate(&mut s, 1).expect("alive: it has a place");
    assert_eq!((at.worker, at.incarnation), (first.0, 0));

    // Its worker dies: while it restarts it has no place; then its new one, next life.
    s.worker_lost(first);
    let placed = runs(&s.drain_effects());
    assert_eq!(locate(&mut s, 2), None);
    let other = *ws.iter().find(|w| **w != first).unwrap();
    assert_eq!(placed[0].0, other);
    s.task_finished(other, inline(actor, placed[0].1.attempt, b""));
    s.drain_effects();
    let at = locate(&mut s, 3).expect("restarted");
    assert_eq!((at.worker, at.incarnation), (other.0, 1));
}

/// A call a driver made straight to the actor's worker is recorded once it ended: counted, its
/// result an object of the session (stored ones on that worker), the session not told again.
#[test]
fn a_direct_call_is_recorded_when_it_ended() {
    let (mut s, sess, _) = setup(2, &[("w1", 2)]);
    let actor = oid(sess, 1);
    let w = create_actor(&mut s, sess, actor, 0, "");
    let finished = s.snapshot().tasks_finished;
    let (c1, c2, c3) = (oid(sess, 2), oid(sess, 3), oid(sess, 4));
    let done = |id: ObjectId, result: pb::TaskResult| pb::DirectCallDone {
        spec: Some(call(id, actor, "incr", vec![val(b"1")])),
        worker: w.0,
        result: Some(result),
        lease: 0,
    };
    s.direct_call_done(sess, done(c1, inline(c1, 0, b"v1")));
    s.direct_call_done(sess, done(c2, stored(c2, 0, 1 << 20)));
    s.direct_call_done(sess, done(c3, failed(c3, 0, Kind::Application, "no")));
    assert!(s.drain_effects().is_empty(), "the session has the results");
    let snap = s.snapshot();
    assert_eq!(snap.tasks_finished, finished + 2);
    assert_eq!(snap.tasks_failed, 1);

    // The results are objects like any: a task takes one, a subscriber learns it.
    s.subscribe(sess, c1);
    assert_eq!(
        value_of(&s.drain_effects(), sess, c1),
        Bytes::from_static(b"v1")
    );
    let t = oid(sess, 5);
    s.submit(sess, task(t, "f", vec![obj(c2)]));
    let placed = runs(&s.drain_effects());
    assert_eq!(placed.len(), 1);
    match &placed[0].1.args[0].kind {
        Some(resolved_arg::Kind::Stored(r)) => {
            assert_eq!(r.r#where.as_ref().unwrap().locations[0].worker, w.0)
        }
        other => panic!("unexpected {other:?}"),
    }
    s.task_finished(w, inline(t, 0, b"ok"));
    s.drain_effects();
    // Released (with the task's output, whose lineage holds it), a stored result is freed on
    // its worker.
    s.release(sess, t);
    s.release(sess, c2);
    assert!(commands(&s.drain_effects()).contains(&free(w, c2)));

    // A report for another session's id, or one that takes references, is refused.
    let other = s.open_session(None);
    s.direct_call_done(other, done(oid(sess, 6), inline(oid(sess, 6), 0, b"x")));
    assert_error(
        &s.drain_effects(),
        other,
        oid(sess, 6),
        Kind::Invalid,
        &["another session"],
    );
    let by_ref = pb::DirectCallDone {
        spec: Some(call(oid(sess, 7), actor, "incr", vec![obj(c1)])),
        worker: w.0,
        result: Some(inline(oid(sess, 7), 0, b"x")),
        lease: 0,
    };
    s.direct_call_done(sess, by_ref);
    assert_error(
        &s.drain_effects(),
        sess,
        oid(sess, 7),
        Kind::Invalid,
        &["inline"],
    );
}

// ---------------------------------------------------------------------------------- leases

/// Asks for a lease of one plain slot for `f` and returns the answer.
fn lease(s: &mut Scheduler, sess: SessionId, request: u64) -> pb::LeaseGranted {
    s.request_lease(
        sess,
        pb::LeaseRequest {
            request,
            function: "f".into(),
            resources: None,
        },
    );
    let effects = s.drain_effects();
    let grants: Vec<pb::LeaseGranted> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Lease(to, g) if *to == sess => Some(g.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(grants.len(), 1, "one answer in {effects:#?}");
    grants[0].clone()
}

fn revoked(effects: &[Effect]) -> Vec<(SessionId, u64)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::LeaseRevoked(s, l) => Some((*s, *l)),
            _ => None,
        })
        .collect()
}

fn leased_done(
    lease: u64,
    worker: WorkerId,
    id: ObjectId,
    result: pb::TaskResult,
) -> pb::DirectCallDone {
    pb::DirectCallDone {
        spec: Some(task(id, "f", vec![val(b"1")])),
        worker: worker.0,
        result: Some(result),
        lease,
    }
}

/// A lease takes a slot as a running task does: placement, status, demand see it; a task that
/// ran on it is recorded like a dispatched one; given back, the slot is free again.
#[test]
fn a_lease_holds_a_slot_until_it_is_given_back() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1), ("w2", 2)]);
    let g = lease(&mut s, sess, 1);
    assert_ne!(g.lease, 0, "granted: {g:?}");
    let at = g.location.expect("where the slot is");
    assert_eq!(at.worker, ws[1].0, "the worker with the most free slots");
    assert_eq!(at.address, "http://w2:7100");
    assert_eq!(s.leased(), (1, 1));
    let snap = s.snapshot();
    assert_eq!(
        (snap.slots_busy, snap.workers_busy, snap.workers_idle),
        (1, 1, 1)
    );
    assert_eq!(snap.desired_workers, 1, "the leased slot is demand");
    assert_eq!(snap.demand_by_group.get(""), Some(&1));

    // Through the head, two of four tasks fill the two slots left beside the lease.
    for n in 1..=4 {
        s.submit(sess, task(oid(sess, n), "f", vec![]));
    }
    let placed = run_ids(&s.drain_effects());
    assert_eq!(placed.len(), 2, "{placed:?}");
    assert_eq!(placed.iter().filter(|(w, _)| *w == ws[1]).count(), 1);

    // A task that ran on the lease is recorded as finished, its value an object of the session.
    let t = oid(sess, 10);
    let finished = s.snapshot().tasks_finished;
    s.direct_call_done(sess, leased_done(g.lease, ws[1], t, inline(t, 0, b"v")));
    assert!(s.drain_effects().is_empty(), "the session has the value");
    assert_eq!(s.snapshot().tasks_finished, finished + 1);
    s.subscribe(sess, t);
    assert_eq!(
        value_of(&s.drain_effects(), sess, t),
        Bytes::from_static(b"v")
    );

    // Without a lease id, a plain task's report is refused.
    let u = oid(sess, 11);
    s.direct_call_done(sess, leased_done(0, ws[1], u, inline(u, 0, b"v")));
    assert_error(&s.drain_effects(), sess, u, Kind::Invalid, &["lease"]);

    // Given back (another session cannot), the slot takes the queued task.
    let other = s.open_session(None);
    s.return_lease(other, g.lease);
    assert!(s.drain_effects().is_empty());
    assert_eq!(s.leased(), (1, 1));
    s.return_lease(sess, g.lease);
    assert_eq!(s.leased(), (0, 0));
    assert_eq!(
        run_ids(&s.drain_effects()).len(),
        1,
        "the waiting task runs"
    );
}

/// No lease jumps the head's queue, none goes where no slot is free, and none to a cancelled
/// job's session.
#[test]
fn a_lease_is_refused_when_tasks_wait_or_no_slot_is_free() {
    let (mut s, sess, _) = setup(0, &[("w1", 1)]);
    let first = lease(&mut s, sess, 1);
    assert_ne!(first.lease, 0);
    let second = lease(&mut s, sess, 2);
    assert_eq!(second.lease, 0);
    assert!(second.error.contains("free slot"), "{}", second.error);
    s.submit(sess, task(oid(sess, 1), "f", vec![]));
    s.drain_effects();
    s.return_lease(sess, first.lease);
    s.drain_effects();
    s.submit(sess, task(oid(sess, 2), "f", vec![]));
    s.drain_effects();
    let queued = lease(&mut s, sess, 3);
    assert_eq!(queued.lease, 0);
    assert!(queued.error.contains("waiting"), "{}", queued.error);

    let job = s.open_job_session(None, Some("job-a".into()));
    s.cancel_job("job-a");
    s.drain_effects();
    let cancelled = lease(&mut s, job, 4);
    assert!(cancelled.error.contains("cancelled"), "{}", cancelled.error);
}

/// A drain revokes the leases on its worker and waits for them to come back; a drain whose
/// deadline passes ends them.
#[test]
fn a_drain_waits_for_leases_to_come_back() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let g = lease(&mut s, sess, 1);
    let now = Instant::now();
    s.drain(ws[0], now, Duration::from_secs(30));
    let effects = s.drain_effects();
    assert_eq!(revoked(&effects), vec![(sess, g.lease)]);
    assert!(drained(&effects).is_empty(), "the lease is out");
    // The last leased task's report comes before the lease goes back.
    let t = oid(sess, 1);
    s.direct_call_done(sess, leased_done(g.lease, ws[0], t, inline(t, 0, b"v")));
    assert!(drained(&s.drain_effects()).is_empty());
    s.return_lease(sess, g.lease);
    let ended = drained(&s.drain_effects());
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].2, pb::DrainOutcome::Drained);

    // Past the deadline, a lease not given back ends with the drain.
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let g = lease(&mut s, sess, 1);
    s.drain(ws[0], now, Duration::from_secs(1));
    s.drain_effects();
    s.tick(now + Duration::from_secs(2));
    let effects = s.drain_effects();
    assert_eq!(drained(&effects)[0].2, pb::DrainOutcome::TimedOut);
    assert_eq!(s.leased(), (0, 0));
    assert!(revoked(&effects).contains(&(sess, g.lease)));
}

/// A cancelled job's leases are revoked and their workers told to stop the tasks on them; a
/// closed session's leases are freed; a lost worker's leases end, their holders told.
#[test]
fn leases_end_with_their_job_their_session_or_their_worker() {
    let (mut s, _, ws) = setup(0, &[("w1", 2), ("w2", 2)]);
    let job = s.open_job_session(None, Some("job-a".into()));
    let g = lease(&mut s, job, 1);
    s.cancel_job("job-a");
    let effects = s.drain_effects();
    assert_eq!(revoked(&effects), vec![(job, g.lease)]);
    let worker = WorkerId(g.location.as_ref().unwrap().worker);
    assert!(commands(&effects).contains(&(worker, Command::CancelLease(g.lease))));

    let driver = s.open_session(None);
    let held = lease(&mut s, driver, 2);
    assert_eq!(s.leased().1, 2);
    s.close_session(driver);
    s.drain_effects();
    assert_eq!(s.leased().1, 1, "the closed session's lease is free");
    let _ = held;

    let driver = s.open_session(None);
    let on = lease(&mut s, driver, 3);
    let w = WorkerId(on.location.unwrap().worker);
    assert!(ws.contains(&w));
    s.worker_lost(w);
    assert!(revoked(&s.drain_effects()).contains(&(driver, on.lease)));
    assert!(s.leased().1 <= 1);
}

/// A leased task's stored output is rebuilt from its lineage when its worker is lost, as a
/// dispatched task's is: both when the worker goes after the report and before it.
#[test]
fn a_leased_tasks_lost_output_is_run_again() {
    let (mut s, sess, ws) = setup(0, &[("w1", 2), ("w2", 2), ("w3", 2)]);
    let g = lease(&mut s, sess, 1);
    let on = WorkerId(g.location.as_ref().unwrap().worker);
    let other = *ws.iter().find(|w| **w != on && **w != ws[2]).unwrap();

    let t = oid(sess, 10);
    s.direct_call_done(sess, leased_done(g.lease, on, t, stored(t, 0, 1 << 20)));
    assert!(s.drain_effects().is_empty());
    s.worker_lost(on);
    let effects = s.drain_effects();
    assert_eq!(
        run_ids(&effects),
        vec![(other, t)],
        "run again on the worker left: {effects:#?}"
    );
    s.task_finished(other, stored(t, 0, 1 << 20));
    // The owner, told its object is pending again, hears where the rebuilt one is.
    assert_eq!(stored_at(&s.drain_effects(), sess, t), vec![other.0]);

    // Reported after its worker went: run again at once, not failed.
    let g = lease(&mut s, sess, 2);
    let on = WorkerId(g.location.as_ref().unwrap().worker);
    let left = if on == other { ws[2] } else { other };
    // (When that worker kept `t`, `t` is run again too, on the worker left.)
    s.worker_lost(on);
    s.drain_effects();
    let u = oid(sess, 11);
    s.direct_call_done(sess, leased_done(g.lease, on, u, stored(u, 0, 1 << 20)));
    assert_eq!(run_ids(&s.drain_effects()), vec![(left, u)]);
}

/// Another session's tasks waiting with no free slot revoke the leases held; a lost leased run
/// sent again counts as a retry.
#[test]
fn waiting_tasks_of_another_session_revoke_leases() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let g = lease(&mut s, sess, 1);
    let other = s.open_session(None);
    s.submit(other, task(oid(other, 1), "f", vec![]));
    let effects = s.drain_effects();
    assert!(run_ids(&effects).is_empty(), "no free slot");
    assert_eq!(revoked(&effects), vec![(sess, g.lease)]);
    s.return_lease(sess, g.lease);
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], oid(other, 1))]);

    let retried = s.snapshot().tasks_retried;
    s.submit_lost(
        sess,
        task(oid(sess, 5), "f", vec![]),
        None,
        "http://w1:7100",
    );
    s.drain_effects();
    assert_eq!(s.snapshot().tasks_retried, retried + 1);
    assert_eq!(
        s.snapshot().tasks_pending,
        1,
        "queued behind the other session's task"
    );
}

/// A task on a lease that waits in `get` lends the lease's slot, as a dispatched task lends its
/// own, so the tasks it waits for run even with no prefetch; resumed, it takes the slot back.
#[test]
fn a_leased_task_waiting_in_get_lends_its_slot() {
    let (mut s, sess, ws) = setup(0, &[("w1", 1)]);
    let g = lease(&mut s, sess, 1);
    let worker_session = s.open_session(Some("w1".into()));
    let child = oid(worker_session, 1);
    s.submit(worker_session, task(child, "f", vec![]));
    assert!(
        run_ids(&s.drain_effects()).is_empty(),
        "the lease holds the only slot"
    );
    let leased = oid(sess, 9);
    s.task_blocked_on(ws[0], leased, true);
    assert_eq!(run_ids(&s.drain_effects()), vec![(ws[0], child)]);
    s.task_finished(ws[0], inline(child, 0, b"c"));
    s.task_blocked_on(ws[0], leased, false);
    s.drain_effects();
    let busy = s.workers()[0].busy_slots;
    assert_eq!(busy, 1, "the lease has its slot back");
    s.return_lease(sess, g.lease);
    assert_eq!(s.workers()[0].busy_slots, 0);
}
