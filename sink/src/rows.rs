//! Rows encoded once, at intake: a partition's rows as one RowBinary buffer in the table's
//! types, with the Kafka offset where each row ends. Nothing else of a message is kept: no
//! decoded struct, no copy of its key, payload or headers. The rare insert ClickHouse rejects
//! gets its messages back from Kafka ([`crate::refetch`]): Kafka is the buffer.
//!
//! [`Rows`] grows while the batch fills; [`Sealed`] is what the write stage inserts: shared,
//! immutable, sliced without copying for every part of a split insert.

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use crate::row::RowRef;
use crate::schema::Layout;

/// Bytes of bookkeeping per row besides its encoding (offset and end).
const INDEX_BYTES: usize = std::mem::size_of::<(i64, u32)>();

/// Room below which a row buffer grows (more than any row's encoding takes: the contract
/// bounds texts to 2 KiB each, and valid events are far smaller).
const GROWTH_MARGIN: usize = 32 * 1024;
/// The least a row buffer grows by.
const MIN_GROWTH: usize = 64 * 1024;

/// The rows of one partition's segment, as they arrive.
#[derive(Debug, Default)]
pub struct Rows {
    layout: Option<Arc<Layout>>,
    body: Vec<u8>,
    /// (offset, end of the row in `body`).
    index: Vec<(i64, u32)>,
}

impl Rows {
    /// Encodes `row` with the layout of this segment (the first row's: `layout` is asked only
    /// then), so that one buffer is in one structure.
    pub fn push(&mut self, layout: impl FnOnce() -> Arc<Layout>, row: &RowRef<'_>) {
        let layout = self.layout.get_or_insert_with(layout);
        if self.body.capacity() - self.body.len() < GROWTH_MARGIN {
            // Grow by a quarter, not double: memory is counted by capacity, and a doubling
            // of a big buffer would pass `max_batch_bytes` by the buffer's whole size.
            self.body
                .reserve_exact((self.body.len() / 4).max(MIN_GROWTH));
        }
        layout.encode(row, &mut self.body);
        let end = u32::try_from(self.body.len()).expect("a segment stays under 4 GiB");
        self.index.push((row.kafka_offset, end));
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Memory held (capacity, not length: what the process really keeps).
    pub fn bytes(&self) -> usize {
        self.body.capacity() + self.index.capacity() * INDEX_BYTES
    }

    /// Freezes the rows for writing (no copy). `None` when there are none.
    pub fn seal(self) -> Option<Sealed> {
        let layout = self.layout?;
        Some(Sealed {
            layout,
            body: Bytes::from(self.body),
            index: self.index,
        })
    }
}

impl crate::batch::RowBuffer for Rows {
    fn len(&self) -> usize {
        Rows::len(self)
    }
    fn bytes(&self) -> usize {
        Rows::bytes(self)
    }
}

/// A segment's rows, frozen for the write stage.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub layout: Arc<Layout>,
    body: Bytes,
    index: Vec<(i64, u32)>,
}

impl Sealed {
    /// Rows encoded again, for another layout (after an ALTER), from their source events.
    pub fn encode(layout: Arc<Layout>, rows: &[RowRef<'_>]) -> Sealed {
        let mut body = Vec::with_capacity(rows.len() * 200);
        let mut index = Vec::with_capacity(rows.len());
        for row in rows {
            layout.encode(row, &mut body);
            index.push((row.kafka_offset, body.len() as u32));
        }
        Sealed {
            layout,
            body: Bytes::from(body),
            index,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.body.len() + self.index.len() * INDEX_BYTES
    }

    pub fn offset(&self, i: usize) -> i64 {
        self.index[i].0
    }

    pub fn offsets(&self) -> impl Iterator<Item = i64> + '_ {
        self.index.iter().map(|&(offset, _)| offset)
    }

    fn span(&self, i: usize) -> (usize, usize) {
        let start = if i == 0 {
            0
        } else {
            self.index[i - 1].1 as usize
        };
        (start, self.index[i].1 as usize)
    }

    /// The encoded bytes of row `i`.
    pub fn row(&self, i: usize) -> &[u8] {
        let (start, end) = self.span(i);
        &self.body[start..end]
    }

    /// Event id and event time (ms) of row `i`.
    pub fn id_and_time(&self, i: usize) -> (Uuid, i64) {
        self.layout.id_and_time(self.row(i))
    }

    /// The bytes of the rows `part` (indices in increasing order): a slice of the buffer when
    /// they are consecutive, else a copy.
    pub fn body(&self, part: &[usize]) -> Bytes {
        let (Some(&first), Some(&last)) = (part.first(), part.last()) else {
            return Bytes::new();
        };
        if last - first + 1 == part.len() {
            let (start, _) = self.span(first);
            let (_, end) = self.span(last);
            return self.body.slice(start..end);
        }
        let mut out = Vec::with_capacity(part.iter().map(|&i| self.row(i).len()).sum());
        for &i in part {
            out.extend_from_slice(self.row(i));
        }
        Bytes::from(out)
    }

    /// Keeps only the rows for which `keep(index)` holds.
    pub fn retain(self, keep: impl Fn(usize) -> bool) -> Sealed {
        let kept: Vec<usize> = (0..self.len()).filter(|&i| keep(i)).collect();
        if kept.len() == self.len() {
            return self;
        }
        let mut body = Vec::with_capacity(kept.iter().map(|&i| self.row(i).len()).sum());
        let mut index = Vec::with_capacity(kept.len());
        for &i in &kept {
            body.extend_from_slice(self.row(i));
            index.push((self.offset(i), body.len() as u32));
        }
        Sealed {
            layout: self.layout,
            body: Bytes::from(body),
            index,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::schema::{Layout, test_columns};

    pub(crate) fn layout() -> Arc<Layout> {
        Arc::new(Layout::new("db", "events", &test_columns(&[])).unwrap())
    }

    pub(crate) fn row(offset: i64, time_ms: i64) -> RowRef<'static> {
        RowRef {
            event_id: Uuid::from_u128(offset as u128 + 1),
            event_time_ms: time_ms,
            user_id: "u",
            session_id: Uuid::nil(),
            event_type: "page_view",
            page_url: "/",
            page_category: "home",
            referrer: "direct",
            device_type: "desktop",
            browser: "firefox",
            country: "DE",
            duration_ms: 1,
            product_id: None,
            price: None,
            quantity: None,
            kafka_topic: "t",
            kafka_partition: 0,
            kafka_offset: offset,
        }
    }

    #[test]
    fn rows_are_kept_as_their_encoding_and_sliced_without_copies() {
        let layout = layout();
        let mut rows = Rows::default();
        for offset in [3, 4, 7] {
            rows.push(|| layout.clone(), &row(offset, 1_000 * offset));
        }
        assert_eq!(rows.len(), 3);
        assert!(rows.bytes() >= rows.body.len() + 3 * INDEX_BYTES);
        let sealed = rows.seal().unwrap();
        assert_eq!(sealed.offsets().collect::<Vec<_>>(), vec![3, 4, 7]);
        assert_eq!(sealed.id_and_time(2), (Uuid::from_u128(8), 7_000));
        let mut one = Vec::new();
        layout.encode(&row(4, 4_000), &mut one);
        assert_eq!(sealed.row(1), &one[..]);
        let whole = sealed.body(&[0, 1, 2]);
        assert_eq!(whole.len(), 3 * one.len());
        assert_eq!(
            whole.as_ptr(),
            sealed.body.as_ptr(),
            "consecutive rows are a slice"
        );
        assert_eq!(&sealed.body(&[0, 2])[one.len()..], sealed.row(2));
        let kept = sealed.retain(|i| i != 1);
        assert_eq!(kept.offsets().collect::<Vec<_>>(), vec![3, 7]);
        assert_eq!(kept.id_and_time(1), (Uuid::from_u128(8), 7_000));
    }

    #[test]
    fn a_segment_keeps_the_layout_of_its_first_row() {
        let first = layout();
        let wider = Arc::new(
            Layout::new("db", "events", &test_columns(&[("duration_ms", "UInt64")])).unwrap(),
        );
        let mut rows = Rows::default();
        rows.push(|| first.clone(), &row(0, 0));
        rows.push(|| wider.clone(), &row(1, 0));
        let sealed = rows.seal().unwrap();
        assert!(Arc::ptr_eq(&sealed.layout, &first));
        assert_eq!(sealed.row(0).len(), sealed.row(1).len());
        let again = Sealed::encode(wider.clone(), &[row(0, 0), row(1, 0)]);
        assert_eq!(again.row(1).len(), sealed.row(1).len() + 4);
    }
}
