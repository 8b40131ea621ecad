//! The clickstream simulator: pure, seeded, no I/O.
//!
//! * **Users.** `users` visitors `user_0000`, `user_0001`, ... each with a fixed device type,
//!   browser and country drawn once from the seed.
//! * **Sessions.** About a tenth of the users (at least 1, at most 10,000) are online at a time,
//!   each in a session with its own `session_id` and referrer. Every call to
//!   [`Simulator::next`] advances one random online session by one step of a Markov chain over
//!   the site map (home, category, product, search, cart, checkout, account, blog). A session
//!   ends when the chain exits, or after `session_timeout` without events; then a random offline
//!   user starts a new session (the user pool turns over, so long runs touch every user).
//! * **Funnel.** Products go into the session's cart (`add_to_cart`); a checkout that pays
//!   emits one `purchase` per cart line, with the catalog's unit price. So every purchase
//!   follows an `add_to_cart` of the same product in the same session.
//! * **Bad and late data.** A share `bad_ratio` of the messages is replaced by poison
//!   ([`PoisonKind`], in equal shares), a share `late_ratio` of the events is backdated by 2
//!   minutes to 6 hours (inside the sink's default 7-day window).
//!
//! **Determinism.** Everything but the ids follows from `seed` and the clock values passed to
//! `next`. Event and session ids come from a second generator seeded with `seed` and the clock
//! of the first call: with a fixed clock (tests) the whole stream, ids included, repeats; with
//! the wall clock, two runs with the same seed produce the same content under different ids, so
//! they never collide in the sink.

mod poison;
mod site;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use clickstream_event::{ClickEvent, EventType, Price, RejectReason};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uuid::Uuid;

use site::{Device, Landing, Page, Step, pick};

/// How many users, how much bad and late data, and the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorConfig {
    /// Number of distinct users (`user_0000` ...); at least 1.
    pub users: u32,
    /// Seed of all content (see the module docs for ids).
    pub seed: u64,
    /// Share of messages replaced by poison, 0 to 1.
    pub bad_ratio: f64,
    /// Share of messages that are valid but backdated by 2 minutes to 6 hours, 0 to 1.
    /// `bad_ratio + late_ratio` must not exceed 1.
    pub late_ratio: f64,
    /// A session without events for this long ends; the user's next event starts a new one.
    pub session_timeout: Duration,
}

impl Default for SimulatorConfig {
    fn default() -> SimulatorConfig {
        SimulatorConfig {
            users: 500,
            seed: 0,
            bad_ratio: 0.0,
            late_ratio: 0.0,
            session_timeout: Duration::minutes(30),
        }
    }
}

/// One message to publish: a valid event, or poison for testing the sink.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "events are the common case; boxing would cost an allocation each"
)]
pub enum Generated {
    Event(ClickEvent),
    Poison {
        kind: PoisonKind,
        /// The user id of the session the poison replaced an event of.
        key: String,
        payload: Vec<u8>,
    },
}

impl Generated {
    /// The Kafka key: the user id.
    pub fn key(&self) -> &str {
        match self {
            Generated::Event(event) => &event.user_id,
            Generated::Poison { key, .. } => key,
        }
    }

    /// The Kafka payload: the event's JSON, or the poison bytes.
    pub fn payload(&self) -> Vec<u8> {
        match self {
            Generated::Event(event) => event.to_json(),
            Generated::Poison { payload, .. } => payload.clone(),
        }
    }

    /// Key and payload, without copying the poison bytes.
    pub fn into_key_and_payload(self) -> (String, Vec<u8>) {
        match self {
            Generated::Event(event) => {
                let payload = event.to_json();
                (event.user_id, payload)
            }
            Generated::Poison { key, payload, .. } => (key, payload),
        }
    }
}

/// The kinds of bad messages, one per way the sink must reject a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PoisonKind {
    /// Truncated JSON, trailing garbage, or not JSON at all.
    InvalidJson,
    /// JSON with Latin-1 or broken multi-byte sequences in a string.
    InvalidUtf8,
    /// A message with an empty value.
    EmptyPayload,
    /// A required field left out (or a purchase / add-to-cart without its product fields).
    MissingField,
    /// A field of the wrong JSON type (a string duration, a numeric id, ...).
    WrongType,
    /// An `event_type` the contract does not know.
    UnknownEventType,
    /// Negative or absurd values: negative price, 10^12 price, quantity 0, a 46-day duration,
    /// an empty user id, a country that is no ISO code.
    OutOfRange,
    /// A timestamp hours to weeks in the future (or decades in the past).
    FutureTimestamp,
    /// A payload of 96 to 160 KiB: over the sink's default 64 KiB limit, under Kafka's 1 MB.
    Oversized,
}

impl PoisonKind {
    pub const ALL: [PoisonKind; 9] = [
        PoisonKind::InvalidJson,
        PoisonKind::InvalidUtf8,
        PoisonKind::EmptyPayload,
        PoisonKind::MissingField,
        PoisonKind::WrongType,
        PoisonKind::UnknownEventType,
        PoisonKind::OutOfRange,
        PoisonKind::FutureTimestamp,
        PoisonKind::Oversized,
    ];

    /// Why `clickstream_event::decode` with default `Limits` rejects this kind.
    pub fn expected_reason(self) -> RejectReason {
        match self {
            PoisonKind::InvalidJson => RejectReason::InvalidJson,
            PoisonKind::InvalidUtf8 => RejectReason::InvalidUtf8,
            PoisonKind::EmptyPayload => RejectReason::EmptyPayload,
            PoisonKind::MissingField => RejectReason::MissingField,
            PoisonKind::WrongType => RejectReason::WrongType,
            PoisonKind::UnknownEventType => RejectReason::UnknownEventType,
            PoisonKind::OutOfRange => RejectReason::OutOfRange,
            PoisonKind::FutureTimestamp => RejectReason::TimestampOutOfWindow,
            PoisonKind::Oversized => RejectReason::Oversized,
        }
    }

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            PoisonKind::InvalidJson => "invalid_json",
            PoisonKind::InvalidUtf8 => "invalid_utf8",
            PoisonKind::EmptyPayload => "empty_payload",
            PoisonKind::MissingField => "missing_field",
            PoisonKind::WrongType => "wrong_type",
            PoisonKind::UnknownEventType => "unknown_event_type",
            PoisonKind::OutOfRange => "out_of_range",
            PoisonKind::FutureTimestamp => "future_timestamp",
            PoisonKind::Oversized => "oversized",
        }
    }
}

/// What the simulator has produced so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimulatorStats {
    /// Valid events, late ones included.
    pub events: u64,
    /// Valid events with a backdated timestamp.
    pub late: u64,
    /// Poison messages.
    pub poison: u64,
    /// Sessions started.
    pub sessions: u64,
}

/// Backdating of late events, in seconds: 2 minutes to 6 hours.
const LATE_BY_S: std::ops::RangeInclusive<i64> = 120..=6 * 3_600;

struct User {
    id: String,
    device: Device,
    browser: &'static str,
    country: &'static str,
}

struct Product {
    id: String,
    url: String,
    category: u8,
    price: Price,
}

struct Session {
    user: u32,
    id: Uuid,
    referrer: &'static str,
    /// None until the landing page view.
    page: Option<Page>,
    cart: Vec<(u32, u16)>,
    /// Cart lines paid for but not yet emitted as `purchase` events.
    paying: Vec<(u32, u16)>,
    last_seen: DateTime<Utc>,
}

/// The event of one step, before ids and time are attached.
struct Step1 {
    event_type: EventType,
    page: Page,
    duration_ms: u32,
    line: Option<(u32, u16)>,
}

/// Generates a realistic, reproducible clickstream. See the module docs.
pub struct Simulator {
    config: SimulatorConfig,
    /// Drives the walk (content).
    walk: ChaCha8Rng,
    /// Decides bad / late and shapes poison, so ratios do not change the walk.
    faults: ChaCha8Rng,
    /// Event and session ids; seeded at the first `next` (see the module docs).
    ids: Option<ChaCha8Rng>,
    users: Vec<User>,
    products: Vec<Product>,
    category_urls: Vec<String>,
    search_urls: Vec<String>,
    blog_urls: Vec<String>,
    online: Vec<Session>,
    offline: Vec<u32>,
    stats: SimulatorStats,
}

impl Simulator {
    /// # Panics
    /// If `users` is 0, a ratio is outside 0 to 1, or `bad_ratio + late_ratio > 1`.
    pub fn new(config: SimulatorConfig) -> Simulator {
        assert!(config.users >= 1, "users must be at least 1");
        for (name, ratio) in [
            ("bad_ratio", config.bad_ratio),
            ("late_ratio", config.late_ratio),
        ] {
            assert!(
                (0.0..=1.0).contains(&ratio),
                "{name} {ratio} is not in 0..=1"
            );
        }
        assert!(
            config.bad_ratio + config.late_ratio <= 1.0,
            "bad_ratio + late_ratio must not exceed 1"
        );

        let mut setup = ChaCha8Rng::seed_from_u64(config.seed);
        let walk = ChaCha8Rng::seed_from_u64(setup.next_u64());
        let faults = ChaCha8Rng::seed_from_u64(setup.next_u64());
        let width = config.users.saturating_sub(1).to_string().len().max(4);
        let users: Vec<User> = (0..config.users)
            .map(|n| {
                let device = pick(&mut setup, site::DEVICES);
                User {
                    id: format!("user_{n:0width$}"),
                    device,
                    browser: pick(&mut setup, device.browsers()),
                    country: pick(&mut setup, site::COUNTRIES),
                }
            })
            .collect();
        let products = catalog(&mut setup);
        let category_urls = site::CATEGORIES
            .iter()
            .map(|(name, _)| format!("/c/{name}"))
            .collect();
        let search_urls = site::SEARCH_TERMS
            .iter()
            .map(|term| format!("/search?q={term}"))
            .collect();
        let blog_urls = site::BLOG_POSTS
            .iter()
            .map(|slug| format!("/blog/{slug}"))
            .collect();

        // Users 0..online start online (in random order of arrival, the rest wait offline).
        let online_target = (config.users / 10).clamp(1, 10_000);
        let mut offline: Vec<u32> = (0..config.users).rev().collect();
        let mut simulator = Simulator {
            config,
            walk,
            faults,
            ids: None,
            users,
            products,
            category_urls,
            search_urls,
            blog_urls,
            online: Vec::with_capacity(online_target as usize),
            offline: Vec::new(),
            stats: SimulatorStats::default(),
        };
        for _ in 0..online_target {
            let slot = simulator.walk.random_range(0..offline.len());
            let user = offline.swap_remove(slot);
            simulator.online.push(Session {
                user,
                id: Uuid::nil(), // replaced at the session's first event
                referrer: "",
                page: None,
                cart: Vec::new(),
                paying: Vec::new(),
                last_seen: DateTime::<Utc>::MIN_UTC,
            });
        }
        simulator.offline = offline;
        simulator
    }

    pub fn config(&self) -> &SimulatorConfig {
        &self.config
    }

    pub fn stats(&self) -> SimulatorStats {
        self.stats
    }

    /// The next message at wall-clock `now` (truncated to milliseconds, the JSON's precision).
    pub fn next(&mut self, now: DateTime<Utc>) -> Generated {
        let seed = self.config.seed;
        let ids = self.ids.get_or_insert_with(|| {
            // The untruncated clock: runs started within the same millisecond still differ.
            let clock = now.timestamp_nanos_opt().unwrap_or(now.timestamp_millis()) as u64;
            ChaCha8Rng::seed_from_u64(seed ^ clock.rotate_left(29) ^ 0x9E37_79B9_7F4A_7C15)
        });
        let event_id = random_uuid(ids);
        let now = now.trunc_subsecs(3);

        let slot = self.walk.random_range(0..self.online.len());
        let timed_out = now - self.online[slot].last_seen > self.config.session_timeout;
        if timed_out && self.online[slot].page.is_some() {
            // Inactive too long: the same user comes back in a new session.
            self.online[slot].page = None;
        }
        let step = match self.advance(slot) {
            Some(step) => step,
            None => {
                // The session exited: its user goes offline, a random offline user arrives.
                let user = self.online[slot].user;
                self.offline.push(user);
                let pick = self.walk.random_range(0..self.offline.len());
                self.online[slot].user = self.offline.swap_remove(pick);
                self.online[slot].page = None;
                self.advance(slot).expect("a new session always lands")
            }
        };
        self.online[slot].last_seen = now;
        let session = &self.online[slot];
        let user = &self.users[session.user as usize];
        let (product_id, price, quantity) = match step.line {
            Some((product, quantity)) => {
                let product = &self.products[product as usize];
                (
                    Some(product.id.clone()),
                    Some(product.price),
                    Some(quantity),
                )
            }
            None => (None, None, None),
        };
        let mut event = ClickEvent {
            event_id,
            timestamp: now,
            user_id: user.id.clone(),
            session_id: session.id,
            event_type: step.event_type,
            page_url: self.page_url(step.page).to_owned(),
            page_category: step.page.section().to_owned(),
            referrer: session.referrer.to_owned(),
            device_type: user.device.as_str().to_owned(),
            browser: user.browser.to_owned(),
            country: user.country.to_owned(),
            duration_ms: step.duration_ms,
            product_id,
            price,
            quantity,
        };

        let draw: f64 = self.faults.random();
        if draw < self.config.bad_ratio {
            self.stats.poison += 1;
            let kind = PoisonKind::ALL[self.faults.random_range(0..PoisonKind::ALL.len())];
            let payload = poison::make(kind, &event, now, &mut self.faults);
            return Generated::Poison {
                kind,
                key: event.user_id,
                payload,
            };
        }
        if draw < self.config.bad_ratio + self.config.late_ratio {
            self.stats.late += 1;
            event.timestamp = now - Duration::seconds(self.faults.random_range(LATE_BY_S))
                + Duration::milliseconds(self.faults.random_range(0..1_000));
        }
        self.stats.events += 1;
        Generated::Event(event)
    }

    /// One step of session `slot`: a landing page view for a new session, or a transition.
    /// None when the visitor leaves.
    fn advance(&mut self, slot: usize) -> Option<Step1> {
        let rng = &mut self.walk;
        let session = &mut self.online[slot];
        let Some(page) = session.page else {
            // A new session: id, referrer, landing page; an empty cart.
            let ids = self.ids.as_mut().expect("seeded before the first step");
            session.id = random_uuid(ids);
            session.referrer = pick(rng, site::REFERRERS);
            session.cart.clear();
            session.paying.clear();
            self.stats.sessions += 1;
            let landing = match pick(rng, site::landing_pages(session.referrer)) {
                Landing::Home => Page::Home,
                Landing::Category => Page::Category(random_index(rng, site::CATEGORIES.len())),
                Landing::Product => Page::Product(popular_product(rng, None)),
                Landing::Blog => Page::Blog(random_index(rng, site::BLOG_POSTS.len())),
                Landing::Account => Page::Account,
            };
            session.page = Some(landing);
            return Some(view(rng, landing));
        };

        if let Some(line) = session.paying.pop() {
            if session.paying.is_empty() {
                session.page = Some(Page::Confirmation);
            }
            return Some(Step1 {
                event_type: EventType::Purchase,
                page: Page::Checkout,
                duration_ms: dwell_ms(rng, Page::Checkout, 0.2),
                line: Some(line),
            });
        }

        let steps = page.steps();
        let has_cart = !session.cart.is_empty();
        let total: u32 = steps
            .iter()
            .filter(|(step, _)| has_cart || !step.needs_cart())
            .map(|(_, weight)| weight)
            .sum();
        let mut ticket = rng.random_range(0..total);
        let mut chosen = Step::Exit;
        for &(step, weight) in steps {
            if !has_cart && step.needs_cart() {
                continue;
            }
            if ticket < weight {
                chosen = step;
                break;
            }
            ticket -= weight;
        }

        let category_of = |page: Page, products: &[Product]| match page {
            Page::Category(c) => Some(c),
            Page::Product(p) => Some(products[p as usize].category),
            _ => None,
        };
        let next = match chosen {
            Step::Exit => return None,
            Step::Click => {
                return Some(Step1 {
                    event_type: EventType::Click,
                    page,
                    duration_ms: dwell_ms(rng, page, 0.4),
                    line: None,
                });
            }
            Step::AddToCart => {
                let Page::Product(product) = page else {
                    unreachable!("add to cart is a step of product pages only")
                };
                let quantity = pick(rng, site::QUANTITIES);
                session.cart.push((product, quantity));
                return Some(Step1 {
                    event_type: EventType::AddToCart,
                    page,
                    duration_ms: dwell_ms(rng, page, 0.6),
                    line: Some((product, quantity)),
                });
            }
            Step::Buy => {
                session.paying = std::mem::take(&mut session.cart);
                session.paying.reverse(); // pop() pays in cart order
                let line = session.paying.pop().expect("buy needs a cart");
                session.page = Some(if session.paying.is_empty() {
                    Page::Confirmation
                } else {
                    Page::Checkout
                });
                return Some(Step1 {
                    event_type: EventType::Purchase,
                    page: Page::Checkout,
                    duration_ms: dwell_ms(rng, Page::Checkout, 0.8),
                    line: Some(line),
                });
            }
            Step::ToSearch => {
                let next = Page::Search(random_index(rng, site::SEARCH_TERMS.len()));
                session.page = Some(next);
                return Some(Step1 {
                    event_type: EventType::Search,
                    page: next,
                    duration_ms: dwell_ms(rng, next, 1.0),
                    line: None,
                });
            }
            Step::ToHome => Page::Home,
            Step::ToCategory => Page::Category(random_index(rng, site::CATEGORIES.len())),
            Step::ToProduct => Page::Product(popular_product(
                rng,
                category_of(page, &self.products).filter(|_| matches!(page, Page::Category(_))),
            )),
            Step::ToRelatedProduct => {
                Page::Product(popular_product(rng, category_of(page, &self.products)))
            }
            Step::ToCart => Page::Cart,
            Step::ToCheckout => Page::Checkout,
            Step::ToAccount => Page::Account,
            Step::ToBlog => Page::Blog(random_index(rng, site::BLOG_POSTS.len())),
        };
        session.page = Some(next);
        Some(view(rng, next))
    }

    fn page_url(&self, page: Page) -> &str {
        match page {
            Page::Home => "/",
            Page::Category(c) => &self.category_urls[c as usize],
            Page::Product(p) => &self.products[p as usize].url,
            Page::Search(s) => &self.search_urls[s as usize],
            Page::Cart => "/cart",
            Page::Checkout => "/checkout",
            Page::Confirmation => "/checkout/confirmation",
            Page::Account => "/account",
            Page::Blog(b) => &self.blog_urls[b as usize],
        }
    }
}

/// A page view of `page` (which becomes the session's page by the caller or here).
fn view<R: Rng>(rng: &mut R, page: Page) -> Step1 {
    Step1 {
        event_type: EventType::PageView,
        page,
        duration_ms: dwell_ms(rng, page, 1.0),
        line: None,
    }
}

/// Time on `page` (log-normal around its median), times `share` for actions mid-visit.
fn dwell_ms<R: Rng>(rng: &mut R, page: Page, share: f64) -> u32 {
    let seconds = site::log_normal(rng, page.median_dwell_s(), 0.9) * share;
    (seconds * 1_000.0).clamp(200.0, 30.0 * 60.0 * 1_000.0) as u32
}

fn random_index<R: Rng>(rng: &mut R, len: usize) -> u8 {
    rng.random_range(0..len) as u8
}

/// A product, popular ones more often (the square of a uniform favors low ranks), from
/// `category` if given.
fn popular_product<R: Rng>(rng: &mut R, category: Option<u8>) -> u32 {
    let category = match category {
        Some(c) => u32::from(c),
        None => rng.random_range(0..site::CATEGORIES.len() as u32),
    };
    let u: f64 = rng.random();
    let rank = (u * u * f64::from(site::PRODUCTS_PER_CATEGORY)) as u32;
    category * site::PRODUCTS_PER_CATEGORY + rank.min(site::PRODUCTS_PER_CATEGORY - 1)
}

/// The catalog: `PRODUCTS_PER_CATEGORY` products per category, log-normal prices around the
/// category's median, most ending in .99.
fn catalog<R: Rng>(rng: &mut R) -> Vec<Product> {
    let mut products = Vec::new();
    for (category, (_, median)) in site::CATEGORIES.iter().enumerate() {
        for _ in 0..site::PRODUCTS_PER_CATEGORY {
            let n = products.len();
            let dollars = site::log_normal(rng, *median, 0.7).clamp(1.0, 4_000.0);
            let cents = match rng.random_range(0..10) {
                0..=6 => dollars.floor() as i64 * 100 + 99,
                7..=8 => dollars.floor() as i64 * 100 + 49,
                _ => dollars.round() as i64 * 100,
            };
            let id = format!("p-{:04}", n + 1);
            products.push(Product {
                url: format!("/p/{id}"),
                id,
                category: category as u8,
                price: Price::from_cents(cents),
            });
        }
    }
    products
}

fn random_uuid<R: Rng>(rng: &mut R) -> Uuid {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests;
