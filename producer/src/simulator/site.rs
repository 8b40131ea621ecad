//! The simulated shop: its visitors' attributes, its catalog, its pages and the Markov chain that
//! walks them. Static tables only; the randomness lives in the simulator.

use rand::{Rng, RngExt};

/// Picks an index by weight from a small static table (linear scan: the tables have ≤ 12 rows).
pub(crate) fn pick<T: Copy, R: Rng>(rng: &mut R, table: &[(T, u32)]) -> T {
    let total: u32 = table.iter().map(|(_, weight)| weight).sum();
    let mut ticket = rng.random_range(0..total);
    for &(item, weight) in table {
        if ticket < weight {
            return item;
        }
        ticket -= weight;
    }
    table[table.len() - 1].0
}

/// A standard normal sample (Box-Muller), for log-normal prices and dwell times.
pub(crate) fn standard_normal<R: Rng>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A log-normal sample with the given median and spread (sigma of the underlying normal).
pub(crate) fn log_normal<R: Rng>(rng: &mut R, median: f64, sigma: f64) -> f64 {
    median * (sigma * standard_normal(rng)).exp()
}

// ---- visitors ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Device {
    Desktop,
    Mobile,
    Tablet,
}

impl Device {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Device::Desktop => "desktop",
            Device::Mobile => "mobile",
            Device::Tablet => "tablet",
        }
    }

    /// Browser shares per device type, roughly like public web statistics.
    pub(crate) fn browsers(self) -> &'static [(&'static str, u32)] {
        match self {
            Device::Desktop => &[
                ("chrome", 64),
                ("edge", 13),
                ("safari", 12),
                ("firefox", 8),
                ("opera", 3),
            ],
            Device::Mobile => &[
                ("chrome", 48),
                ("safari", 40),
                ("samsung_internet", 8),
                ("firefox", 2),
                ("opera", 2),
            ],
            Device::Tablet => &[("safari", 58), ("chrome", 38), ("samsung_internet", 4)],
        }
    }
}

pub(crate) const DEVICES: &[(Device, u32)] = &[
    (Device::Mobile, 55),
    (Device::Desktop, 40),
    (Device::Tablet, 5),
];

/// ISO 3166-1 alpha-2 codes, weighted like an international shop's audience.
pub(crate) const COUNTRIES: &[(&str, u32)] = &[
    ("US", 30),
    ("GB", 9),
    ("DE", 9),
    ("FR", 6),
    ("IN", 7),
    ("CA", 5),
    ("BR", 5),
    ("JP", 4),
    ("AU", 4),
    ("ES", 3),
    ("IT", 3),
    ("NL", 3),
    ("MX", 3),
    ("PL", 2),
    ("SE", 2),
    ("KR", 2),
    ("ZA", 1),
    ("NG", 1),
    ("SG", 1),
];

// ---- traffic sources -----------------------------------------------------------------------

pub(crate) const REFERRERS: &[(&str, u32)] = &[
    ("google.com", 30),
    ("direct", 24),
    ("email", 8),
    ("facebook.com", 8),
    ("instagram.com", 6),
    ("x.com", 5),
    ("reddit.com", 5),
    ("bing.com", 5),
    ("youtube.com", 4),
    ("duckduckgo.com", 3),
    ("tiktok.com", 2),
];

/// Where a visit from `referrer` lands.
pub(crate) fn landing_pages(referrer: &str) -> &'static [(Landing, u32)] {
    match referrer {
        "google.com" | "bing.com" | "duckduckgo.com" => &[
            (Landing::Product, 45),
            (Landing::Category, 30),
            (Landing::Home, 20),
            (Landing::Blog, 5),
        ],
        "direct" => &[
            (Landing::Home, 80),
            (Landing::Account, 10),
            (Landing::Product, 10),
        ],
        "email" => &[
            (Landing::Product, 50),
            (Landing::Category, 25),
            (Landing::Home, 25),
        ],
        _ => &[
            (Landing::Product, 40),
            (Landing::Blog, 35),
            (Landing::Home, 25),
        ],
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Landing {
    Home,
    Category,
    Product,
    Blog,
    Account,
}

// ---- catalog -------------------------------------------------------------------------------

/// Product categories with the median price (in dollars) of their products.
pub(crate) const CATEGORIES: &[(&str, f64)] = &[
    ("electronics", 120.0),
    ("books", 15.0),
    ("fashion", 45.0),
    ("home-garden", 55.0),
    ("sports", 40.0),
    ("toys", 25.0),
    ("beauty", 20.0),
    ("grocery", 8.0),
];

pub(crate) const PRODUCTS_PER_CATEGORY: u32 = 125;

pub(crate) const SEARCH_TERMS: &[&str] = &[
    "headphones",
    "running+shoes",
    "coffee",
    "laptop",
    "lego",
    "yoga+mat",
    "sunscreen",
    "novel",
    "phone+case",
    "desk+lamp",
    "backpack",
    "tea",
    "jacket",
    "blender",
    "board+games",
    "usb-c+cable",
    "perfume",
    "garden+hose",
    "water+bottle",
    "sale",
];

pub(crate) const BLOG_POSTS: &[&str] = &[
    "gift-guide",
    "summer-sale",
    "how-to-choose-headphones",
    "best-running-shoes",
    "home-office-setup",
    "coffee-brewing-101",
    "sustainable-fashion",
    "back-to-school",
];

// ---- pages and the walk --------------------------------------------------------------------

/// Where a visitor is. Indices point into the tables above (and the catalog).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Page {
    Home,
    Category(u8),
    Product(u32),
    Search(u8),
    Cart,
    Checkout,
    Confirmation,
    Account,
    Blog(u8),
}

impl Page {
    /// The site section: the event's `page_category`.
    pub(crate) fn section(self) -> &'static str {
        match self {
            Page::Home => "home",
            Page::Category(_) => "category",
            Page::Product(_) => "product",
            Page::Search(_) => "search",
            Page::Cart => "cart",
            Page::Checkout | Page::Confirmation => "checkout",
            Page::Account => "account",
            Page::Blog(_) => "blog",
        }
    }

    /// Median seconds a visitor stays on this kind of page.
    pub(crate) fn median_dwell_s(self) -> f64 {
        match self {
            Page::Home => 8.0,
            Page::Category(_) => 14.0,
            Page::Product(_) => 35.0,
            Page::Search(_) => 10.0,
            Page::Cart => 20.0,
            Page::Checkout => 60.0,
            Page::Confirmation => 12.0,
            Page::Account => 25.0,
            Page::Blog(_) => 90.0,
        }
    }

    /// The next step of a visitor on this page, with weights. Steps that need a non-empty cart
    /// (`Cart`, `Checkout`, `Buy`) are skipped when the cart is empty.
    pub(crate) fn steps(self) -> &'static [(Step, u32)] {
        use Step::*;
        match self {
            Page::Home => &[
                (ToCategory, 34),
                (ToSearch, 14),
                (ToProduct, 14),
                (ToBlog, 6),
                (ToAccount, 4),
                (ToCart, 4),
                (Click, 10),
                (Exit, 9),
            ],
            Page::Category(_) => &[
                (ToProduct, 46),
                (ToCategory, 9),
                (ToSearch, 7),
                (ToHome, 4),
                (ToCart, 3),
                (Click, 14),
                (Exit, 12),
            ],
            Page::Search(_) => &[
                (ToProduct, 52),
                (ToSearch, 12),
                (ToCategory, 8),
                (Click, 6),
                (Exit, 15),
            ],
            Page::Product(_) => &[
                (AddToCart, 9),
                (ToRelatedProduct, 22),
                (ToCategory, 13),
                (ToSearch, 7),
                (ToCart, 12),
                (Click, 16),
                (Exit, 20),
            ],
            Page::Cart => &[
                (ToCheckout, 55),
                (ToProduct, 12),
                (ToHome, 5),
                (Click, 8),
                (Exit, 30),
            ],
            Page::Checkout => &[(Buy, 62), (ToCart, 10), (Click, 5), (Exit, 23)],
            Page::Confirmation => &[(ToHome, 10), (ToCategory, 8), (ToAccount, 7), (Exit, 75)],
            Page::Account => &[(ToHome, 30), (ToCart, 5), (Click, 25), (Exit, 40)],
            Page::Blog(_) => &[
                (ToBlog, 18),
                (ToProduct, 22),
                (ToHome, 12),
                (Click, 10),
                (Exit, 28),
            ],
        }
    }
}

/// One transition of the Markov chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    ToHome,
    ToCategory,
    /// A product of any category (from home, search, cart, blog) or of the current one.
    ToProduct,
    /// Another product of the same category ("customers also viewed").
    ToRelatedProduct,
    ToSearch,
    ToCart,
    ToCheckout,
    ToAccount,
    ToBlog,
    /// Interact with the current page (gallery, filter, tab) without leaving it.
    Click,
    AddToCart,
    /// Pay: one `purchase` event per cart line.
    Buy,
    Exit,
}

impl Step {
    pub(crate) fn needs_cart(self) -> bool {
        matches!(self, Step::ToCart | Step::ToCheckout | Step::Buy)
    }
}

/// How many items of a product go into the cart.
pub(crate) const QUANTITIES: &[(u16, u32)] = &[(1, 78), (2, 14), (3, 5), (4, 2), (6, 1)];

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn pick_follows_the_weights() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let table = [("a", 1), ("b", 3), ("never", 0)];
        let mut b = 0;
        for _ in 0..40_000 {
            match pick(&mut rng, &table) {
                "b" => b += 1,
                "a" => {}
                other => panic!("picked {other}"),
            }
        }
        assert!((29_000..31_000).contains(&b), "b picked {b} of 40000");
    }

    #[test]
    fn log_normal_has_its_median() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut samples: Vec<f64> = (0..20_001)
            .map(|_| log_normal(&mut rng, 30.0, 0.8))
            .collect();
        samples.sort_by(f64::total_cmp);
        let median = samples[10_000];
        assert!((28.0..32.0).contains(&median), "median {median}");
        assert!(samples.iter().all(|s| *s > 0.0));
    }

    #[test]
    fn every_page_can_be_left_and_every_table_has_weight() {
        for page in [
            Page::Home,
            Page::Category(0),
            Page::Product(0),
            Page::Search(0),
            Page::Cart,
            Page::Checkout,
            Page::Confirmation,
            Page::Account,
            Page::Blog(0),
        ] {
            let steps = page.steps();
            assert!(steps.iter().any(|(step, w)| *step == Step::Exit && *w > 0));
            assert!(
                steps
                    .iter()
                    .any(|(step, w)| !step.needs_cart() && *step != Step::Exit && *w > 0),
                "{page:?} needs a step that works with an empty cart"
            );
        }
    }
}
