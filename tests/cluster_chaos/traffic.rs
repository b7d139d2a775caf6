//! The run's traffic: the data's history as the writer makes it, the
//! writer, and the readers that judge every value they get against that
//! history.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::doc;
use bson::oid::ObjectId;
use smache::Smache;

use super::{banner, card, card_of, headline, spent, Order, User, CALL_BOUND, STALE_BOUND, USERS};

/// One version of a value in the data's history: its value, from the
/// moment the write that made it started until the moment the write after
/// it ended (`None`: still current).
struct Version<T> {
    value: T,
    from: Instant,
    until: Option<Instant>,
}

/// The history of one value, as the writer made it.
struct Timeline<T>(Vec<Version<T>>);

impl<T: PartialEq + Clone> Timeline<T> {
    fn new(value: T, at: Instant) -> Self {
        Timeline(vec![Version {
            value,
            from: at,
            until: None,
        }])
    }

    fn current(&self) -> &T {
        &self.0.last().expect("a version").value
    }

    /// A write to `value` starts at `at`: a reader may see it from now.
    fn begin(&mut self, value: T, at: Instant) {
        self.0.push(Version {
            value,
            from: at,
            until: None,
        });
    }

    /// The write begun last ended at `at`: the version before it may have
    /// been seen until now.
    fn end(&mut self, at: Instant) {
        let len = self.0.len();
        if len >= 2 {
            self.0[len - 2].until = Some(at);
        }
    }

    /// How far behind the data a read of `got` made between `start` and
    /// `end` was: zero when `got` was current at some moment in between,
    /// else the time from the end of its latest version to `start`;
    /// `None` when no version ever had it.
    fn behind(&self, got: &T, start: Instant, end: Instant) -> Option<Duration> {
        self.0
            .iter()
            .filter(|v| v.value == *got && v.from <= end)
            .map(|v| {
                v.until.map_or(Duration::ZERO, |until| {
                    start.saturating_duration_since(until)
                })
            })
            .min()
    }
}

/// The data's history: each user's card and orders total.
#[derive(Default)]
pub(super) struct Model {
    cards: HashMap<ObjectId, Timeline<String>>,
    spent: HashMap<ObjectId, Timeline<i64>>,
}

impl Model {
    /// When `user`'s data last started changing.
    pub(super) fn last_change(&self, user: ObjectId) -> Instant {
        let card = self.cards[&user].0.last().map(|v| v.from);
        let spent = self.spent[&user].0.last().map(|v| v.from);
        card.max(spent).expect("a version")
    }
}

/// What the readers saw.
#[derive(Default)]
pub(super) struct Reads {
    calls: AtomicU64,
    /// The longest call, in µs.
    slowest_us: AtomicU64,
    /// The furthest behind a value was, in ms.
    furthest_behind_ms: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Reads {
    pub(super) fn summary(&self) -> String {
        let failures = self.failures.lock().unwrap();
        format!(
            "{} calls (slowest {:.0} ms, furthest behind its data {} ms), {} failed{}",
            self.calls.load(Ordering::SeqCst),
            self.slowest_us.load(Ordering::SeqCst) as f64 / 1000.0,
            self.furthest_behind_ms.load(Ordering::SeqCst),
            failures.len(),
            failures
                .first()
                .map_or(String::new(), |first| format!(", the first: {first}"))
        )
    }

    /// The reads that failed (the first 50).
    pub(super) fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    fn fail(&self, failure: String) {
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 50 {
            failures.push(failure);
        }
    }
}

/// A small deterministic generator (xorshift), seeded per run.
pub(super) struct Dice(pub(super) u64);

impl Dice {
    pub(super) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % n as u64).unwrap()
    }
}

/// What the run shares with its writer and readers.
pub(super) struct Shared {
    pub(super) people: Vec<User>,
    /// The data's history, as the writer makes it.
    pub(super) model: Mutex<Model>,
    /// Per user: the writer changes it no more. Users are in three groups
    /// (`index % 3`): the writer stops changing the first once the replica
    /// is promoted, the second while smache's slot is half moved, the
    /// third at the end; so each group's last changes are handled during
    /// one disruption, and a change lost there is not repaired by a later
    /// one: the final check sees it.
    pub(super) frozen: Vec<AtomicBool>,
    pub(super) stop: AtomicBool,
    pub(super) reads: Reads,
}

impl Shared {
    pub(super) fn freeze(&self, group: usize) {
        for (i, frozen) in self.frozen.iter().enumerate() {
            if i % 3 == group {
                frozen.store(true, Ordering::SeqCst);
            }
        }
    }

    fn writable(&self, who: usize) -> bool {
        !self.frozen[who].load(Ordering::SeqCst)
    }
}

/// The users, an order each, and their history so far; the orders as the
/// writer keeps them (id, owner, total).
pub(super) async fn populate(
    db: &mongodb::Database,
    dice: &mut Dice,
) -> (Arc<Shared>, Vec<(ObjectId, usize, i64)>) {
    let setup = Instant::now();
    let mut model = Model::default();
    let mut people = Vec::new();
    let mut live_orders = Vec::new();
    for i in 0..USERS {
        let user = User {
            id: ObjectId::new(),
            name: format!("user{i}"),
            score: 0,
        };
        db.collection::<User>("users")
            .insert_one(&user)
            .await
            .unwrap();
        let order = Order {
            id: ObjectId::new(),
            user_id: user.id,
            total: dice.below(100) as i64 + 1,
        };
        db.collection::<Order>("orders")
            .insert_one(&order)
            .await
            .unwrap();
        live_orders.push((order.id, i, order.total));
        model
            .cards
            .insert(user.id, Timeline::new(card_of(&user), setup));
        model
            .spent
            .insert(user.id, Timeline::new(order.total, setup));
        people.push(user);
    }
    let shared = Shared {
        frozen: people.iter().map(|_| AtomicBool::new(false)).collect(),
        people,
        model: Mutex::new(model),
        stop: AtomicBool::new(false),
        reads: Reads::default(),
    };
    (Arc::new(shared), live_orders)
}

/// The writer: score updates, orders inserted, moved and deleted, among
/// the users not frozen, each noted in the model before it is made and
/// after it is done, 10 ms apart. Returns how many writes it made.
pub(super) async fn write_loop(
    db: mongodb::Database,
    shared: Arc<Shared>,
    mut live_orders: Vec<(ObjectId, usize, i64)>,
    seed: u64,
) -> u64 {
    let users = db.collection::<User>("users");
    let orders = db.collection::<Order>("orders");
    let people = &shared.people;
    let mut dice = Dice(seed | 1);
    let mut writes = 0;
    let total = |live: &[(ObjectId, usize, i64)], who: usize| -> i64 {
        live.iter().filter(|o| o.1 == who).map(|o| o.2).sum()
    };
    while !shared.stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let who = dice.below(people.len());
        if !shared.writable(who) {
            continue;
        }
        let user = &people[who];
        // An order of a user still changed, if any.
        let movable: Vec<usize> = (0..live_orders.len())
            .filter(|&at| shared.writable(live_orders[at].1))
            .collect();
        let started = Instant::now();
        writes += 1;
        let touched = match dice.below(10) {
            0..=4 => {
                let card = card_of(&User {
                    score: writes as i64,
                    ..user.clone()
                });
                let note =
                    |model: &mut Model| model.cards.get_mut(&user.id).unwrap().begin(card, started);
                note(&mut shared.model.lock().unwrap());
                users
                    .update_one(
                        doc! { "_id": user.id },
                        doc! { "$set": { "score": writes as i64 } },
                    )
                    .await
                    .expect("update a user");
                let done = Instant::now();
                shared
                    .model
                    .lock()
                    .unwrap()
                    .cards
                    .get_mut(&user.id)
                    .unwrap()
                    .end(done);
                continue;
            }
            5..=6 => {
                let order = Order {
                    id: ObjectId::new(),
                    user_id: user.id,
                    total: dice.below(100) as i64 + 1,
                };
                live_orders.push((order.id, who, order.total));
                begin_totals(&shared, &live_orders, &[who], started, total);
                orders.insert_one(&order).await.expect("insert an order");
                vec![who]
            }
            7 if !movable.is_empty() => {
                let at = movable[dice.below(movable.len())];
                let (id, from, _) = live_orders[at];
                live_orders[at].1 = who;
                let mut touched = vec![from, who];
                touched.dedup();
                begin_totals(&shared, &live_orders, &touched, started, total);
                orders
                    .update_one(doc! { "_id": id }, doc! { "$set": { "user_id": user.id } })
                    .await
                    .expect("move an order");
                touched
            }
            _ if !movable.is_empty() => {
                let at = movable[dice.below(movable.len())];
                let (id, from, _) = live_orders.swap_remove(at);
                begin_totals(&shared, &live_orders, &[from], started, total);
                orders
                    .delete_one(doc! { "_id": id })
                    .await
                    .expect("delete an order");
                vec![from]
            }
            _ => continue,
        };
        let done = Instant::now();
        let mut model = shared.model.lock().unwrap();
        for who in touched {
            model.spent.get_mut(&people[who].id).unwrap().end(done);
        }
    }
    writes
}

/// Notes in the model the new orders totals of the `touched` users,
/// before the write that makes them.
fn begin_totals(
    shared: &Shared,
    live: &[(ObjectId, usize, i64)],
    touched: &[usize],
    at: Instant,
    total: impl Fn(&[(ObjectId, usize, i64)], usize) -> i64,
) {
    let mut model = shared.model.lock().unwrap();
    for &who in touched {
        model
            .spent
            .get_mut(&shared.people[who].id)
            .unwrap()
            .begin(total(live, who), at);
    }
}

/// A reader: loads a user, calls its three functions, and judges each
/// value against the data's history, 5 ms apart.
pub(super) async fn read_loop(
    smache: Smache,
    db: mongodb::Database,
    shared: Arc<Shared>,
    seed: u64,
    redis_url: String,
) {
    let users = db.collection::<User>("users");
    let reads = &shared.reads;
    let mut dice = Dice(seed);
    while !shared.stop.load(Ordering::SeqCst) {
        let who = &shared.people[dice.below(shared.people.len())];
        let start = Instant::now();
        let user = users
            .find_one(doc! { "_id": who.id })
            .await
            .expect("load a user")
            .expect("the user");
        let card_value = timed(reads, "card", &user.name, smache.scope(card(&user))).await;
        let headline_value =
            timed(reads, "headline", &user.name, smache.scope(headline(&user))).await;
        let banner_value = timed(
            reads,
            "banner",
            &user.name,
            smache.scope(banner(user.id.to_hex())),
        )
        .await;
        let spent_value = timed(reads, "spent", &user.name, smache.scope(spent(&user)))
            .await
            .map(|total| total.to_string());
        if spent_value.is_none() {
            // Who held the value then: its lease, its marks.
            let key = smache.storage_key(&spent::key(&user).unwrap());
            reads.fail(format!(
                "spent of {} then: {}",
                user.name,
                value_state(&redis_url, &key).await
            ));
        }
        let end = Instant::now();
        judge(
            &shared.model.lock().unwrap(),
            reads,
            who,
            (start, end),
            [card_value, headline_value, banner_value, spent_value],
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Judges the values a reader got for `who` (card, headline, banner, spent) in
/// `window` against the data's history.
fn judge(
    model: &Model,
    reads: &Reads,
    who: &User,
    (start, end): (Instant, Instant),
    [card_value, headline_value, banner_value, spent_value]: [Option<String>; 4],
) {
    let cards = &model.cards[&who.id];
    let totals = &model.spent[&who.id];
    let verdict = |what: &str, got: &str, behind: Option<Duration>| match behind {
        None => reads.fail(format!(
            "{what} of {}: {got:?} is no version of its data (now {:?} / {})",
            who.name,
            cards.current(),
            totals.current()
        )),
        Some(behind) if behind > STALE_BOUND => reads.fail(format!(
            "{what} of {}: {got:?} is {behind:?} behind its data (now {:?} / {})",
            who.name,
            cards.current(),
            totals.current()
        )),
        Some(behind) => {
            reads.furthest_behind_ms.fetch_max(
                u64::try_from(behind.as_millis()).unwrap_or(u64::MAX),
                Ordering::SeqCst,
            );
        }
    };
    if let Some(got) = &card_value {
        verdict("card", got, cards.behind(got, start, end));
    }
    if let Some(got) = &headline_value {
        let inner = got
            .strip_prefix("** ")
            .and_then(|rest| rest.strip_suffix(" **"))
            .unwrap_or_default();
        verdict("headline", got, cards.behind(&inner.to_owned(), start, end));
    }
    if let Some(got) = &banner_value {
        let inner = got
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or_default();
        verdict("banner", got, cards.behind(&inner.to_owned(), start, end));
    }
    if let Some(got) = &spent_value {
        let behind = got
            .parse::<i64>()
            .ok()
            .and_then(|total| totals.behind(&total, start, end));
        verdict("spent", got, behind);
    }
}

/// Runs one call within [`CALL_BOUND`], counting it; `None` (a failure
/// noted) when it takes longer.
async fn timed<T>(
    reads: &Reads,
    what: &str,
    whose: &str,
    call: impl std::future::Future<Output = T>,
) -> Option<T> {
    let called = Instant::now();
    let result = tokio::time::timeout(CALL_BOUND, call).await;
    let took = u64::try_from(called.elapsed().as_micros()).unwrap_or(u64::MAX);
    reads.calls.fetch_add(1, Ordering::SeqCst);
    reads.slowest_us.fetch_max(took, Ordering::SeqCst);
    if result.is_err() {
        reads.fail(format!("{what} of {whose} took longer than {CALL_BOUND:?}"));
    }
    result.ok()
}

/// The fields of the value hash at `key` that say who computes it and
/// why (the compute lease `c`/`cx`, the change generations, the marks):
/// for a call that took too long. The lease owner's ObjectId bytes 4–8
/// (hex 8..18) name its process (see the run's "process ids").
async fn value_state(redis_url: &str, key: &str) -> String {
    let read = async {
        let mut conn = smache_suite::redis_connection(redis_url).await;
        let fields = ["v", "g", "w", "q", "t", "e", "m", "s", "c", "cx", "k"];
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(key)
            .arg(&fields[..])
            .query_async(&mut conn)
            .await
            .map_err(|err| err.to_string())?;
        let now: (String, String) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(|err| err.to_string())?;
        let set: Vec<String> = fields
            .iter()
            .zip(values)
            .filter_map(|(field, value)| value.map(|value| format!("{field}={value}")))
            .collect();
        Ok::<_, String>(format!(
            "{key} {{{}}} at Redis time {}.{:06}",
            set.join(" "),
            now.0,
            now.1.parse::<u32>().unwrap_or(0)
        ))
    };
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(state)) => state,
        Ok(Err(err)) => format!("{key}: not read ({err})"),
        Err(_) => format!("{key}: not read (timed out)"),
    }
}

/// This process's part of the ObjectIds it makes (bytes 4–8, hex 8..18):
/// what names a compute lease's owner process.
pub(super) fn process_oid() -> String {
    ObjectId::new().to_hex()[8..18].to_owned()
}
