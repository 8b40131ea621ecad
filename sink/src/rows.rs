//! Rows encoded once, at intake: a partition's rows as one RowBinary buffer in the table's
//! types, with the Kafka offset where each row ends. Nothing else of a message is kept: no
//! decoded struct, no copy of its key, payload or headers. The rare insert ClickHouse rejects
//! gets its messages back from Kafka ([`crate::refetch`]): Kafka is the buffer.
//!
//! [`Rows`] grows while the batch fills; [`Sealed`] is what the write stage inserts: shared,
//! immutable, sliced without copying for every part of a split insert.
//!
//! Rows are held packed: each 64 KiB piece is compressed once it is full, as the INSERT sends
//! it (ClickHouse's LZ4 blocks, `decompress=1`, [`crate::packed`]), so a buffered or in-flight
//! row holds about half the memory of its encoding (about 80 bytes a row instead of 166 with the
//! producer's events, the index included). The sink's memory bound then holds twice the rows,
//! which is what one sink lacked against three at full load (its next INSERT's rows, read
//! while ClickHouse takes the last one). The compressing is the work sending did before. A
//! piece is unpacked again only when its rows are read one by one (a split, a refused
//! insert, rows stored meanwhile), and event times are kept beside the rows for the latency
//! metric.

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use crate::packed;
use crate::row::RowRef;
use crate::schema::Layout;

/// Bytes of bookkeeping per row besides its encoding.
const INDEX_BYTES: usize = std::mem::size_of::<Entry>();
/// Size of one piece of a row buffer. Buffers grow by pieces, never by copying what they hold;
/// below the allocator's mmap threshold (128 KiB), so freed pieces are reused without page
/// faults (256 KiB pieces cost 12 % of the sink's CPU in the kernel).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Room below which a piece is closed and a new one started (more than a typical row takes;
/// a bigger row still fits, its piece simply grows).
const CHUNK_MARGIN: usize = 2 * 1024;

/// Where one row is: its Kafka offset, its piece, and where it ends there (it starts where
/// the previous row of the same piece ends, or at 0).
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: i64,
    chunk: u32,
    end: u32,
}

/// The rows of one partition's segment, as they arrive: a piece is packed (compressed once,
/// as its INSERT sends it) when it is full, so a buffered row holds about half the memory of
/// its encoding; the piece being filled is plain, and its buffer is used again for the next.
#[derive(Debug, Default)]
pub struct Rows {
    layout: Option<Arc<Layout>>,
    /// The full pieces, packed.
    packed: Vec<Chunk>,
    /// Their blocks' size: `bytes` stays O(1).
    packed_bytes: usize,
    /// The piece being filled.
    open: Vec<u8>,
    index: Vec<Entry>,
    /// Each row's event time (a packed row's is not read again for the latency metric).
    times: Vec<i64>,
    newest_event_ms: Option<i64>,
    /// Some rows are at offsets ClickHouse once held (see [`Sealed::reread_through`]).
    reread_through: Option<i64>,
}

impl Rows {
    /// Notes that a row pushed is at an offset at or below `ceiling`, the highest one
    /// ClickHouse held for its partition when it was assigned: read again (a group reset
    /// after rows were deleted by hand).
    pub fn mark_reread(&mut self, ceiling: i64) {
        self.reread_through = self.reread_through.max(Some(ceiling));
    }

    /// Room for `need` more bytes in the open piece: a full one is packed first.
    fn room(&mut self, need: usize) {
        if self.open.capacity() - self.open.len() >= need {
            return;
        }
        if !self.open.is_empty() {
            let block = packed::compress(&self.open);
            self.packed_bytes += block.len();
            self.packed.push(Chunk::Packed(block));
            self.open.clear();
        }
        self.open.reserve(CHUNK_BYTES.max(need));
    }

    /// Notes the row just written to the open piece.
    fn added(&mut self, offset: i64, event_time_ms: i64) {
        self.index.push(Entry {
            offset,
            chunk: u32::try_from(self.packed.len()).expect("fewer than 4 G pieces"),
            end: u32::try_from(self.open.len()).expect("a piece stays under 4 GiB"),
        });
        self.times.push(event_time_ms);
        self.newest_event_ms = self.newest_event_ms.max(Some(event_time_ms));
    }

    /// Encodes `row` with the layout of this segment (the first row's: `layout` is asked only
    /// then), so that one buffer is in one structure.
    pub fn push(&mut self, layout: impl FnOnce() -> Arc<Layout>, row: &RowRef<'_>) {
        self.room(CHUNK_MARGIN);
        let layout = self.layout.get_or_insert_with(layout);
        layout.encode(row, &mut self.open);
        self.added(row.kafka_offset, row.event_time_ms);
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Memory held (capacity, not length: what the process really keeps).
    pub fn bytes(&self) -> usize {
        self.packed_bytes
            + self.open.capacity()
            + self.index.capacity() * INDEX_BYTES
            + self.times.capacity() * std::mem::size_of::<i64>()
    }

    /// The newest event time (ms) among the rows (for the freshness gauge).
    pub fn newest_event_ms(&self) -> Option<i64> {
        self.newest_event_ms
    }

    /// Freezes the rows for writing (no copy). `None` when there are none.
    pub fn seal(self) -> Option<Sealed> {
        let layout = self.layout?;
        let mut chunks = self.packed;
        if !self.open.is_empty() {
            chunks.push(Chunk::Plain(Bytes::from(self.open)));
        }
        Some(Sealed {
            layout,
            chunks,
            index: self.index,
            reread_through: self.reread_through,
            times: self.times,
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

/// One piece of a sealed segment: as encoded (the last one, filled until the seal), or
/// packed. A packed piece is unpacked for as long as its rows are read, never kept unpacked:
/// the memory bound counts it packed.
#[derive(Debug, Clone)]
enum Chunk {
    Plain(Bytes),
    Packed(Bytes),
}

impl Chunk {
    /// Its rows' encoding (unpacked for the caller, not kept).
    fn plain(&self) -> Bytes {
        match self {
            Chunk::Plain(bytes) => bytes.clone(),
            Chunk::Packed(block) => packed::decompress(block),
        }
    }

    /// Size of its rows' encoding.
    fn len(&self) -> usize {
        match self {
            Chunk::Plain(bytes) => bytes.len(),
            Chunk::Packed(block) => packed::size(block),
        }
    }

    /// Memory held.
    fn held(&self) -> usize {
        match self {
            Chunk::Plain(bytes) | Chunk::Packed(bytes) => bytes.len(),
        }
    }

    /// The piece as one compressed block, as an INSERT sends it.
    fn block(&self) -> Bytes {
        match self {
            Chunk::Plain(bytes) => packed::compress(bytes),
            Chunk::Packed(block) => block.clone(),
        }
    }
}

/// A segment's rows, frozen for the write stage.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub layout: Arc<Layout>,
    chunks: Vec<Chunk>,
    index: Vec<Entry>,
    /// Each row's event time (the latency metric reads every row's after its insert, without
    /// unpacking them).
    times: Vec<i64>,
    /// Rows at or below this offset were read again at offsets ClickHouse once held (it is
    /// the highest one it held): their inserts may repeat deduplication tokens it still
    /// remembers after the rows were deleted, so the write stage checks that they landed.
    reread_through: Option<i64>,
}

impl Sealed {
    /// Rows encoded again, for another layout (after an ALTER), from their source events.
    pub fn encode(layout: Arc<Layout>, rows: &[RowRef<'_>]) -> Sealed {
        let mut again = Rows::default();
        for row in rows {
            again.push(|| layout.clone(), row);
        }
        again.seal().unwrap_or(Sealed {
            layout,
            chunks: Vec::new(),
            index: Vec::new(),
            reread_through: None,
            times: Vec::new(),
        })
    }

    /// The rows of several segments (of one layout) as one, in the order given: the body of
    /// an INSERT of several partitions. No row is copied (the pieces are shared).
    pub fn concat(parts: &[&Sealed]) -> Option<Sealed> {
        let layout = parts.first()?.layout.clone();
        if parts.iter().any(|p| !Arc::ptr_eq(&p.layout, &layout)) {
            return None;
        }
        let mut chunks = Vec::with_capacity(parts.iter().map(|p| p.chunks.len()).sum());
        let mut index = Vec::with_capacity(parts.iter().map(|p| p.index.len()).sum());
        for part in parts {
            let base = chunks.len() as u32;
            chunks.extend(part.chunks.iter().cloned());
            index.extend(part.index.iter().map(|e| Entry {
                chunk: e.chunk + base,
                ..*e
            }));
        }
        // Every segment keeps one time per row (`Rows::added`): concatenated as the index is.
        let times = parts.iter().flat_map(|p| p.times.iter().copied()).collect();
        Some(Sealed {
            layout,
            chunks,
            index,
            reread_through: parts.iter().filter_map(|p| p.reread_through).max(),
            times,
        })
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Rows at or below this offset were read again at offsets ClickHouse once held (`None`:
    /// none were).
    pub fn reread_through(&self) -> Option<i64> {
        self.reread_through
    }

    /// These rows, marked as read again through `ceiling` or not (rows encoded again keep
    /// their origin's mark).
    pub fn with_reread_through(mut self, ceiling: Option<i64>) -> Sealed {
        self.reread_through = ceiling;
        self
    }

    /// Memory held: the pieces (packed or not), the index and the event times.
    pub fn bytes(&self) -> usize {
        self.chunks.iter().map(Chunk::held).sum::<usize>()
            + self.index.len() * INDEX_BYTES
            + self.times.len() * std::mem::size_of::<i64>()
    }

    pub fn offset(&self, i: usize) -> i64 {
        self.index[i].offset
    }

    pub fn offsets(&self) -> impl Iterator<Item = i64> + '_ {
        self.index.iter().map(|e| e.offset)
    }

    /// Row `i`: its piece, and where it starts and ends there.
    fn span(&self, i: usize) -> (usize, usize, usize) {
        let entry = self.index[i];
        let start = match i.checked_sub(1).map(|p| self.index[p]) {
            Some(previous) if previous.chunk == entry.chunk => previous.end as usize,
            _ => 0,
        };
        (entry.chunk as usize, start, entry.end as usize)
    }

    /// Calls `f` with each row of `indices` (best in increasing order: each piece is unpacked
    /// once per run of its rows, and let go after).
    fn visit(&self, indices: &[usize], mut f: impl FnMut(usize, &[u8])) {
        let mut piece: Option<(usize, Bytes)> = None;
        for &i in indices {
            let (chunk, start, end) = self.span(i);
            let bytes = match &piece {
                Some((at, bytes)) if *at == chunk => bytes,
                _ => &piece.insert((chunk, self.chunks[chunk].plain())).1,
            };
            f(i, &bytes[start..end]);
        }
    }

    /// The encoded bytes of row `i` (its piece unpacked meanwhile).
    pub fn row(&self, i: usize) -> Vec<u8> {
        let mut row = Vec::new();
        self.visit(&[i], |_, bytes| row.extend_from_slice(bytes));
        row
    }

    /// The event ids of the rows `indices` (increasing, so that each piece is unpacked once).
    pub fn ids(&self, indices: &[usize]) -> Vec<Uuid> {
        let mut ids = Vec::with_capacity(indices.len());
        self.visit(indices, |_, row| ids.push(self.layout.id_and_time(row).0));
        ids
    }

    /// Event id of row `i` (its piece unpacked meanwhile: for many rows, [`Sealed::ids`]).
    pub fn id(&self, i: usize) -> Uuid {
        self.ids(&[i])[0]
    }

    /// Event id and event time (ms) of row `i`.
    pub fn id_and_time(&self, i: usize) -> (Uuid, i64) {
        (self.id(i), self.time(i))
    }

    /// Event time (ms) of row `i`, without unpacking anything.
    pub fn time(&self, i: usize) -> i64 {
        self.times[i]
    }

    /// The rows `part` (indices in increasing order) as an INSERT's body (`decompress=1`):
    /// compressed blocks. A whole packed piece is sent as it is; a run of consecutive rows
    /// otherwise is compressed piece by piece from the buffer, rows apart from one copy.
    pub fn body(&self, part: &[usize]) -> Vec<Bytes> {
        let (Some(&first), Some(&last)) = (part.first(), part.last()) else {
            return Vec::new();
        };
        if last - first + 1 == part.len() {
            let (first_chunk, start, _) = self.span(first);
            let (last_chunk, _, end) = self.span(last);
            return (first_chunk..=last_chunk)
                .filter_map(|c| {
                    let chunk = &self.chunks[c];
                    let from = if c == first_chunk { start } else { 0 };
                    let to = if c == last_chunk { end } else { chunk.len() };
                    match (from, to) {
                        _ if from == to => None,
                        (0, to) if to == chunk.len() => Some(chunk.block()),
                        _ => Some(packed::compress(&chunk.plain()[from..to])),
                    }
                })
                .collect();
        }
        // Rows apart: gathered a piece at a time, each piece compressed when full.
        let (mut blocks, mut out) = (Vec::new(), Vec::with_capacity(CHUNK_BYTES));
        self.visit(part, |_, row| {
            if !out.is_empty() && out.len() + row.len() > CHUNK_BYTES {
                blocks.push(packed::compress(&out));
                out.clear();
            }
            out.extend_from_slice(row);
        });
        if !out.is_empty() {
            blocks.push(packed::compress(&out));
        }
        blocks
    }

    /// Keeps only the rows for which `keep(index)` holds.
    pub fn retain(self, keep: impl Fn(usize) -> bool) -> Sealed {
        let kept: Vec<usize> = (0..self.len()).filter(|&i| keep(i)).collect();
        if kept.len() == self.len() {
            return self;
        }
        let mut rows = Rows {
            layout: Some(self.layout.clone()),
            reread_through: self.reread_through,
            ..Rows::default()
        };
        self.visit(&kept, |i, bytes| {
            rows.room(bytes.len());
            rows.open.extend_from_slice(bytes);
            rows.added(self.offset(i), self.time(i));
        });
        rows.seal().unwrap_or(Sealed {
            layout: self.layout,
            chunks: Vec::new(),
            index: Vec::new(),
            reread_through: self.reread_through,
            times: Vec::new(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::schema::{Layout, test_columns};

    /// An INSERT body as the rows' plain encoding.
    pub(crate) fn plain(body: Vec<Bytes>) -> Vec<u8> {
        body.iter()
            .flat_map(|block| packed::decompress(block).to_vec())
            .collect()
    }

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
            kafka_timestamp_ms: Some(time_ms + 5),
        }
    }

    #[test]
    fn memory_held_is_every_pieces_capacity_and_the_index() {
        let layout = layout();
        let mut rows = Rows::default();
        assert_eq!(rows.bytes(), 0);
        let mut encoded = 0;
        for offset in 0..5_000 {
            rows.push(|| layout.clone(), &row(offset, offset));
            let mut one = Vec::new();
            layout.encode(&row(offset, offset), &mut one);
            encoded += one.len();
            if offset % 997 == 0 {
                let counted: usize = rows
                    .packed
                    .iter()
                    .map(|c| match c {
                        Chunk::Packed(block) => block.len(),
                        Chunk::Plain(_) => unreachable!("full pieces are packed"),
                    })
                    .sum::<usize>()
                    + rows.open.capacity()
                    + rows.index.capacity() * INDEX_BYTES
                    + rows.times.capacity() * 8;
                assert_eq!(rows.bytes(), counted, "after {} rows", offset + 1);
            }
        }
        assert!(
            rows.packed.len() > 3,
            "several pieces: {}",
            rows.packed.len()
        );
        assert_eq!(
            rows.open.capacity(),
            CHUNK_BYTES,
            "one open piece, used again"
        );
        let packed: usize = rows.packed.iter().map(Chunk::held).sum();
        let plain: usize = rows.packed.iter().map(Chunk::len).sum();
        assert!(packed < plain / 2, "{packed} bytes packed for {plain}");
        assert!(
            rows.bytes() < encoded,
            "{} bytes held for {encoded}",
            rows.bytes()
        );
    }

    #[test]
    fn rows_are_kept_as_their_encoding_and_read_back_by_index() {
        let layout = layout();
        let mut rows = Rows::default();
        for offset in [3, 4, 7] {
            rows.push(|| layout.clone(), &row(offset, 1_000 * offset));
        }
        assert_eq!(rows.len(), 3);
        assert_eq!(rows.newest_event_ms(), Some(7_000));
        assert_eq!(Rows::default().newest_event_ms(), None);
        assert!(rows.bytes() >= CHUNK_BYTES + 3 * INDEX_BYTES);
        let sealed = rows.seal().unwrap();
        assert_eq!(sealed.offsets().collect::<Vec<_>>(), vec![3, 4, 7]);
        assert_eq!(sealed.id_and_time(2), (Uuid::from_u128(8), 7_000));
        let mut one = Vec::new();
        layout.encode(&row(4, 4_000), &mut one);
        assert_eq!(sealed.row(1), &one[..]);
        let whole = sealed.body(&[0, 1, 2]);
        assert_eq!(whole.len(), 1, "one piece, one block");
        assert_eq!(plain(whole).len(), 3 * one.len());
        assert_eq!(&plain(sealed.body(&[0, 2]))[one.len()..], sealed.row(2));
        let kept = sealed.retain(|i| i != 1);
        assert_eq!(kept.offsets().collect::<Vec<_>>(), vec![3, 7]);
        assert_eq!(kept.id_and_time(1), (Uuid::from_u128(8), 7_000));
    }

    #[test]
    fn big_segments_grow_by_pieces_and_parts_span_them() {
        let layout = layout();
        let mut rows = Rows::default();
        let n = 5_000;
        for offset in 0..n {
            rows.push(|| layout.clone(), &row(offset, offset));
        }
        assert!(rows.packed.len() > 2, "{} pieces", rows.packed.len());
        assert_eq!(rows.newest_event_ms(), Some(n - 1), "across pieces");
        let sealed = rows.seal().unwrap();
        let all: Vec<usize> = (0..n as usize).collect();
        let pieces = sealed.body(&all);
        assert_eq!(pieces.len(), sealed.chunks.len());
        let mut expected = Vec::new();
        for offset in 0..n {
            layout.encode(&row(offset, offset), &mut expected);
        }
        assert_eq!(plain(pieces), expected);
        // A run across a piece boundary.
        let boundary = (0..sealed.len())
            .find(|&i| sealed.index[i].chunk == 1)
            .unwrap();
        let run: Vec<usize> = (boundary - 2..boundary + 2).collect();
        let got = plain(sealed.body(&run));
        let want: Vec<u8> = run.iter().flat_map(|&i| sealed.row(i).to_vec()).collect();
        assert_eq!(got, want);
        for i in [0, boundary - 1, boundary, sealed.len() - 1] {
            assert_eq!(
                sealed.id_and_time(i),
                (Uuid::from_u128(i as u128 + 1), i as i64)
            );
        }
        let kept = sealed.retain(|i| i % 2 == 1);
        assert_eq!(kept.len(), n as usize / 2);
        assert_eq!(kept.id_and_time(0).1, 1);
        assert_eq!(kept.id_and_time(kept.len() - 1).1, n - 1);
    }

    #[test]
    fn rows_are_held_packed_and_full_pieces_sent_as_they_are() {
        let layout = layout();
        let mut rows = Rows::default();
        let n = 5_000;
        for offset in 0..n {
            rows.push(|| layout.clone(), &row(offset, 1_000 * offset));
        }
        let sealed = rows.seal().unwrap();
        let all: Vec<usize> = (0..sealed.len()).collect();
        let before = sealed.bytes();
        let rows_before: Vec<Vec<u8>> = (0..n)
            .map(|offset| {
                let mut one = Vec::new();
                layout.encode(&row(offset, 1_000 * offset), &mut one);
                one
            })
            .collect();
        let body_before = rows_before.concat();
        assert!(before < body_before.len() / 2, "{before} bytes held");
        let packed = sealed;
        let held = packed.bytes();
        // Every attempt sends the full pieces' blocks made once (the last piece, being
        // filled until the seal, is compressed on the way).
        let (first, again) = (packed.body(&all), packed.body(&all));
        assert_eq!(first.len(), packed.chunks.len());
        assert!(
            first[..first.len() - 1]
                .iter()
                .zip(&again)
                .all(|(a, b)| a.as_ptr() == b.as_ptr())
        );
        assert_eq!(plain(first), body_before);
        // Event times and ids; rows read one by one: their piece unpacked meanwhile, the same
        // bytes, nothing kept unpacked.
        assert_eq!(packed.time(4_321), 4_321_000);
        assert_eq!(packed.row(0), rows_before[0]);
        assert!(all.iter().all(|&i| packed.row(i) == rows_before[i]));
        assert_eq!(
            packed.ids(&all),
            (0..n)
                .map(|o| Uuid::from_u128(o as u128 + 1))
                .collect::<Vec<_>>()
        );
        assert_eq!(packed.id(4_999), Uuid::from_u128(5_000));
        assert_eq!(plain(packed.body(&[1, 3, 4_999])), {
            let mut out = rows_before[1].clone();
            out.extend(&rows_before[3]);
            out.extend(&rows_before[4_999]);
            out
        });
        // Rows apart, more than a piece of them: a block per piece.
        let odd: Vec<usize> = all.iter().copied().filter(|i| i % 2 == 1).collect();
        let blocks = packed.body(&odd);
        assert!(blocks.len() > 1, "{} blocks", blocks.len());
        assert!(blocks.iter().all(|b| packed::size(b) <= CHUNK_BYTES));
        assert_eq!(
            plain(blocks),
            odd.iter()
                .flat_map(|&i| rows_before[i].clone())
                .collect::<Vec<_>>()
        );
        assert_eq!(packed.bytes(), held, "nothing kept unpacked");
        // Several partitions' packed rows as one, and a part of them kept.
        let both = Sealed::concat(&[&packed, &packed.clone()]).unwrap();
        assert_eq!(both.time(n as usize + 7), 7_000);
        let kept = both.retain(|i| i % 1_000 == 0);
        assert_eq!(kept.len(), 10);
        assert_eq!(kept.time(9), 4_000_000);
        assert_eq!(kept.row(1), rows_before[1_000]);
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
