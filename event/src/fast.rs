//! The fast path of [`crate::decode_ref`]: the event as the producer writes it, read in one
//! pass with no serde machinery. It only *accepts* what it can read exactly as the serde
//! derive would, to the same value; anything else (an escape in a string, an unknown or
//! repeated field, a number with an exponent, a sign or a third decimal, a missing field, a
//! value serde would refuse) returns `None`, and serde_json decodes the payload instead,
//! accepting it or saying why not. So refusals and their reasons come from one place, and
//! the fast path can only make decoding faster, never different (the property test below
//! compares the two on mutated payloads).
//!
//! Measured (examples/decode_speed.rs, cache-warm): serde's derive spends about 700 ns on a
//! 425-byte event; `decode_ref` with this path about 395 (the parse itself about 330, most of
//! it finding the ends of the strings, eight bytes at a time). On a faster hour: 430 against
//! 238, and 215-218 once the producer's timestamps were read here ([`producer_timestamp`]).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{ClickEventRef, EventType, FIELDS, Price};

/// Reads `text` if it is an event in the plain form; `None` sends it to serde.
pub(crate) fn parse(text: &str) -> Option<ClickEventRef<'_>> {
    let mut scan = Scan {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    scan.expect(b'{')?;
    let mut seen = 0u16;
    let mut event_id = None;
    let mut timestamp = None;
    let mut user_id = None;
    let mut session_id = None;
    let mut event_type = None;
    let mut page_url = None;
    let mut page_category = None;
    let mut referrer = None;
    let mut device_type = None;
    let mut browser = None;
    let mut country = None;
    let mut duration_ms = None;
    let mut product_id = None;
    let mut price = None;
    let mut quantity = None;
    let mut expected = 0;
    loop {
        let field = scan.key(expected)?;
        scan.expect(b':')?;
        match field {
            0 => {
                event_id = Some(Uuid::parse_str(scan.string()?).ok()?);
            }
            1 => {
                let text = scan.string()?;
                timestamp = Some(match producer_timestamp(text) {
                    Some(at) => at,
                    None => DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc),
                });
            }
            2 => {
                user_id = Some(scan.string()?);
            }
            3 => {
                session_id = Some(Uuid::parse_str(scan.string()?).ok()?);
            }
            4 => {
                event_type = Some(match scan.string()? {
                    "page_view" => EventType::PageView,
                    "click" => EventType::Click,
                    "search" => EventType::Search,
                    "add_to_cart" => EventType::AddToCart,
                    "purchase" => EventType::Purchase,
                    _ => return None,
                });
            }
            5 => {
                page_url = Some(scan.string()?);
            }
            6 => {
                page_category = Some(scan.string()?);
            }
            7 => {
                referrer = Some(scan.string()?);
            }
            8 => {
                device_type = Some(scan.string()?);
            }
            9 => {
                browser = Some(scan.string()?);
            }
            10 => {
                country = Some(scan.string()?);
            }
            11 => {
                duration_ms = Some(u32::try_from(scan.unsigned()?).ok()?);
            }
            12 => {
                product_id = Some(if scan.null() {
                    None
                } else {
                    Some(scan.string()?)
                });
            }
            13 => {
                price = Some(if scan.null() {
                    None
                } else {
                    Some(scan.price()?)
                });
            }
            14 => {
                quantity = Some(if scan.null() {
                    None
                } else {
                    Some(u16::try_from(scan.unsigned()?).ok()?)
                });
            }
            _ => return None, // serde skips unknown fields: let it
        }
        if seen & (1 << field) != 0 {
            return None; // serde refuses a repeated field
        }
        seen |= 1 << field;
        expected = field + 1;
        match scan.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    scan.skip_whitespace();
    if scan.at != scan.bytes.len() {
        return None;
    }
    Some(ClickEventRef {
        event_id: event_id?,
        timestamp: timestamp?,
        user_id: Cow::Borrowed(user_id?),
        session_id: session_id?,
        event_type: event_type?,
        page_url: Cow::Borrowed(page_url?),
        page_category: Cow::Borrowed(page_category?),
        referrer: Cow::Borrowed(referrer?),
        device_type: Cow::Borrowed(device_type?),
        browser: Cow::Borrowed(browser?),
        country: Cow::Borrowed(country?),
        duration_ms: duration_ms?,
        // Options missing from the object are `None`, as serde's derive has them.
        product_id: product_id.flatten().map(Cow::Borrowed),
        price: price.flatten(),
        quantity: quantity.flatten(),
    })
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, the one form the producer writes, read without chrono's general
/// RFC 3339 parser, which took about 20 ns of each event. Any other form (another offset,
/// separator or number of decimals, a leap second, a date that does not exist) is `None` and
/// left to that parser, so what is accepted and its value stay chrono's (a test below compares).
fn producer_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let b: &[u8; 24] = text.as_bytes().try_into().ok()?;
    if b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[23] != b'Z'
    {
        return None;
    }
    let number = |from: usize, to: usize| {
        b[from..to].iter().try_fold(0u32, |value, &byte| {
            byte.is_ascii_digit()
                .then(|| value * 10 + u32::from(byte - b'0'))
        })
    };
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(number(0, 4)?).ok()?,
        number(5, 7)?,
        number(8, 10)?,
    )?;
    // Second 60 (a leap second) is `None` here: chrono's parser reads it its own way.
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    Some(
        date.and_hms_milli_opt(hour, minute, second, number(20, 23)?)?
            .and_utc(),
    )
}

/// Where the first `"`, `\\` or control character is, eight bytes at a time (most of an
/// event is its strings: byte by byte this was most of the time).
fn first_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The lowest byte flagged by each test is exact (a borrow only flags bytes above it).
    let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let found = (zero_byte(word ^ (ONES * u64::from(b'"')))
            | zero_byte(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word))
            & HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(at + rest)
}

struct Scan<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte that is not whitespace, taken.
    fn next(&mut self) -> Option<u8> {
        self.skip_whitespace();
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// A string with no escape (those are serde's), borrowed from the text.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let end = start + first_special(&self.bytes[start..])?;
        if self.bytes[end] != b'"' {
            return None; // an escape or a control character
        }
        self.at = end + 1;
        // Both ends are at an ASCII quote, so at character boundaries.
        self.text.get(start..end)
    }

    /// A field name: its index in [`FIELDS`] (`None` for another name, or one with an
    /// escape). The `expected` one (the next in the producer's order) is compared in place.
    fn key(&mut self, expected: usize) -> Option<usize> {
        self.skip_whitespace();
        if let Some(name) = FIELDS.get(expected) {
            let name = name.as_bytes();
            let rest = &self.bytes[self.at..];
            if rest.len() > name.len() + 1
                && rest[0] == b'"'
                && &rest[1..=name.len()] == name
                && rest[name.len() + 1] == b'"'
            {
                self.at += name.len() + 2;
                return Some(expected);
            }
        }
        let name = self.string()?;
        FIELDS.iter().position(|field| *field == name)
    }

    /// `null`, taken if it is next.
    fn null(&mut self) -> bool {
        self.skip_whitespace();
        let null = self.bytes[self.at..].starts_with(b"null");
        if null {
            self.at += 4;
        }
        null
    }

    /// Digits with no sign, leading zero, fraction or exponent, up to `u64`.
    fn unsigned(&mut self) -> Option<u64> {
        let (value, _) = self.digits()?;
        if matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(value)
    }

    /// A run of digits with no leading zero (JSON allows none): its value and length.
    fn digits(&mut self) -> Option<(u64, usize)> {
        self.skip_whitespace();
        let start = self.at;
        let mut value = 0u64;
        while let Some(&byte @ b'0'..=b'9') = self.bytes.get(self.at) {
            value = value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        if digits == 0 || (digits > 1 && self.bytes[start] == b'0') {
            return None;
        }
        Some((value, digits))
    }

    /// A price of at most 6 integer digits and 2 decimals, in cents. In that range serde's
    /// reading (as `f64`, times 100, rounded, within 1e-6 of a whole cent) gives the same
    /// cents; larger, signed or more precise numbers are left to it.
    fn price(&mut self) -> Option<Price> {
        let (whole, digits) = self.digits()?;
        if digits > 6 {
            return None;
        }
        let mut cents = whole as i64 * 100;
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            let start = self.at;
            while let Some(&byte @ b'0'..=b'9') = self.bytes.get(self.at) {
                if self.at - start == 2 {
                    return None;
                }
                let scale = if self.at == start { 10 } else { 1 };
                cents += i64::from(byte - b'0') * scale;
                self.at += 1;
            }
            if self.at == start {
                return None;
            }
        }
        if matches!(self.bytes.get(self.at), Some(b'e' | b'E')) {
            return None;
        }
        Some(Price::from_cents(cents))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClickEvent, ClickEventRef};

    fn serde(text: &str) -> Option<ClickEventRef<'_>> {
        serde_json::from_str(text).ok()
    }

    /// A small deterministic generator (no dependency for it).
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    fn event(random: &mut Lcg) -> ClickEvent {
        let event_type = EventType::ALL[random.below(5) as usize];
        let buys = matches!(event_type, EventType::Purchase | EventType::AddToCart);
        ClickEvent {
            event_id: Uuid::from_u128(u128::from(random.below(u64::MAX)) << 64 | 7),
            timestamp: DateTime::from_timestamp_millis(
                1_790_000_000_000 + random.below(1 << 40) as i64,
            )
            .unwrap(),
            user_id: format!("user_{:04}", random.below(500)),
            session_id: Uuid::from_u128(u128::from(random.below(u64::MAX))),
            event_type,
            page_url: ["/", "/products/p-0105", "/s?q=caf\u{e9}", "/\u{1f600}"]
                [random.below(4) as usize]
                .into(),
            page_category: "electronics".into(),
            referrer: "https://www.google.com/".into(),
            device_type: "mobile".into(),
            browser: "safari".into(),
            country: "DE".into(),
            duration_ms: random.below(u64::from(u32::MAX)) as u32,
            product_id: buys.then(|| format!("p-{:04}", random.below(10_000))),
            price: buys.then(|| Price::from_cents(random.below(20_000_000) as i64 - 10)),
            quantity: buys.then(|| random.below(70_000) as u16),
        }
    }

    /// Bytes that change what a JSON text means.
    const MUTATIONS: &[&str] = &[
        "\"",
        "\\",
        "\\u0041",
        ",",
        ":",
        "{",
        "}",
        "[",
        " ",
        "\n",
        "\t",
        "0",
        "1",
        "9",
        ".",
        "-",
        "e",
        "E",
        "+",
        "null",
        "true",
        "x",
        "\u{0}",
        "\u{1f}",
        "é",
        ".5",
        "00",
        "1e2",
        "\"\"",
        ",\"price\":1",
        ",\"extra\":{}",
        ",\"quantity\":null",
        "\"user_id\":\"u\",",
    ];

    #[test]
    fn takes_what_the_producer_writes_in_any_layout() {
        let mut random = Lcg(42);
        for _ in 0..2_000 {
            let event = event(&mut random);
            let compact = String::from_utf8(event.to_json()).unwrap();
            let pretty = serde_json::to_string_pretty(&event).unwrap();
            // Through a map: the fields in another (sorted) order.
            let reordered = serde_json::to_value(&event).unwrap().to_string();
            for text in [&compact, &pretty, &reordered] {
                assert_eq!(parse(text), serde(text), "{text}");
                assert!(parse(text).is_some(), "the fast path takes {text}");
            }
        }
    }

    #[test]
    fn never_accepts_what_serde_reads_differently_or_refuses() {
        let mut random = Lcg(7);
        let mut taken = 0;
        let mut mutated = 0;
        for _ in 0..200_000 {
            let text = String::from_utf8(event(&mut random).to_json()).unwrap();
            let mut text = text.into_bytes();
            for _ in 0..=random.below(2) {
                let at = random.below(text.len() as u64 + 1) as usize;
                let with = MUTATIONS[random.below(MUTATIONS.len() as u64) as usize].as_bytes();
                match random.below(3) {
                    0 => {
                        text.splice(at..at, with.iter().copied());
                    }
                    1 if at < text.len() => {
                        text.splice(at..at + 1, with.iter().copied());
                    }
                    _ if at < text.len() => {
                        text.remove(at);
                    }
                    _ => {}
                }
            }
            let Ok(text) = String::from_utf8(text) else {
                continue;
            };
            mutated += 1;
            if let Some(fast) = parse(&text) {
                taken += 1;
                assert_eq!(Some(fast), serde(&text), "read differently: {text}");
            }
        }
        // The mutations must leave enough valid events for this to test anything.
        assert!(taken > mutated / 20, "{taken} of {mutated} taken");
    }

    #[test]
    fn reads_the_producers_timestamps_as_chrono_does_and_leaves_it_the_rest() {
        let chrono = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|at| at.with_timezone(&Utc))
        };
        let mut random = Lcg(3);
        let mut stamps: Vec<String> = (0..20_000)
            .map(|_| {
                let millis = random.below(253_402_300_800_000) as i64; // years 1970 to 9999
                DateTime::from_timestamp_millis(millis)
                    .unwrap()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            })
            .collect();
        for stamp in &stamps {
            assert_eq!(producer_timestamp(stamp), chrono(stamp), "{stamp}");
            assert!(producer_timestamp(stamp).is_some(), "{stamp}");
        }
        stamps.extend(
            [
                "2024-02-29T12:00:00.000Z",
                "2023-02-29T12:00:00.000Z",
                "1900-02-29T12:00:00.000Z",
                "2000-02-29T12:00:00.000Z",
                "2026-04-31T00:00:00.000Z",
                "2026-12-31T23:59:60.000Z",
                "2026-12-31T23:59:59.999Z",
                "2026-12-31T24:00:00.000Z",
                "2026-12-31T23:60:00.000Z",
                "2026-00-10T10:00:00.000Z",
                "2026-13-10T10:00:00.000Z",
                "2026-01-00T10:00:00.000Z",
                "0000-01-01T00:00:00.000Z",
                "2026-01-01t00:00:00.000z",
                "2026-01-01 00:00:00.000Z",
                "2026-01-01T00:00:00.000+00:00",
                "2026-01-01T00:00:00.00Z",
                "2026-01-01T00:00:00.0000Z",
                "2026-01-01T00:00:00Z",
                "+2026-01-01T00:00:00.000Z",
            ]
            .map(String::from),
        );
        // Every one-byte change of 300 random stamps and of the edge cases.
        let bytes = b"0123456789-T:.Zt z+/\x7f\xc3";
        let mut changed = 0;
        for stamp in stamps.iter().take(300).chain(&stamps[20_000..]) {
            for at in 0..stamp.len() {
                for &byte in bytes {
                    let mut text = stamp.clone().into_bytes();
                    text[at] = byte;
                    let Ok(text) = String::from_utf8(text) else {
                        continue;
                    };
                    if let Some(at) = producer_timestamp(&text) {
                        assert_eq!(Some(at), chrono(&text), "{text}");
                    }
                    changed += 1;
                }
            }
        }
        assert!(changed > 100_000, "{changed}");
        for stamp in &stamps[20_000..] {
            if let Some(at) = producer_timestamp(stamp) {
                assert_eq!(Some(at), chrono(stamp), "{stamp}");
            }
        }
        assert!(producer_timestamp("2024-02-29T12:00:00.000Z").is_some());
        assert!(producer_timestamp("2026-12-31T23:59:60.000Z").is_none());
        assert!(
            chrono("2026-12-31T23:59:60.000Z").is_some(),
            "chrono's reading"
        );
    }

    #[test]
    fn numbers_at_the_edges_read_as_serde_reads_them() {
        let base = String::from_utf8(
            ClickEvent {
                event_type: EventType::Purchase,
                ..event(&mut Lcg(1))
            }
            .to_json(),
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_str(&base).unwrap();
        let field = |name: &str, number: &str| {
            let mut object = value.as_object().unwrap().clone();
            object.insert(name.into(), serde_json::Value::Null);
            serde_json::Value::Object(object)
                .to_string()
                .replace(&format!("\"{name}\":null"), &format!("\"{name}\":{number}"))
        };
        for number in [
            "0",
            "1",
            "19.9",
            "19.99",
            "19.90",
            "19.999",
            "19.990",
            "19.",
            "019.99",
            "-1.5",
            "-0",
            "999999.99",
            "1000000.01",
            "123456789012.34",
            "1e2",
            "1.5e1",
            "0.01",
            "0.1",
            "0.10",
            "00.1",
            ".5",
            "1..2",
            "null",
            "\"1\"",
            "true",
        ] {
            let text = field("price", number);
            let fast = parse(&text);
            assert!(fast.is_none() || fast == serde(&text), "price {number}");
            if ["19.9", "19.99", "999999.99", "0.01", "0", "null"].contains(&number) {
                assert!(fast.is_some(), "the fast path reads price {number}");
            }
        }
        for number in [
            "0",
            "7",
            "65535",
            "65536",
            "4294967295",
            "4294967296",
            "18446744073709551615",
            "18446744073709551616",
            "01",
            "-1",
            "1.0",
            "1e3",
            "null",
        ] {
            for name in ["duration_ms", "quantity"] {
                let text = field(name, number);
                let fast = parse(&text);
                assert!(fast.is_none() || fast == serde(&text), "{name} {number}");
            }
        }
    }
}
