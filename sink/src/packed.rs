//! ClickHouse's compressed blocks, as an INSERT with `decompress=1` takes them: a 16-byte
//! CityHash128 checksum, the method byte (0x82: LZ4), the block's size with its 9-byte header
//! and the size of its data uncompressed (both little-endian `u32`), then the LZ4 block. It is
//! what the clickhouse crate sends when its compression is on; the sink makes the blocks itself
//! so that rows in flight are held compressed, once, and sent as they are by every attempt.

use bytes::Bytes;

const CHECKSUM: usize = 16;
const HEADER: usize = 9;
const LZ4: u8 = 0x82;

/// `data` as one compressed block (compressed in a buffer of this thread's, then copied to
/// an allocation of its size: it is held while its rows are buffered).
pub fn compress(data: &[u8]) -> Bytes {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|block| {
        let room = CHECKSUM + HEADER + lz4_flex::block::get_maximum_output_size(data.len());
        if block.len() < room {
            block.resize(room, 0);
        }
        let written = lz4_flex::block::compress_into(data, &mut block[CHECKSUM + HEADER..])
            .expect("the output has the maximum size LZ4 can need");
        let compressed = u32::try_from(HEADER + written).expect("a block stays under 4 GiB");
        let size = u32::try_from(data.len()).expect("a block stays under 4 GiB");
        block[CHECKSUM] = LZ4;
        block[CHECKSUM + 1..CHECKSUM + 5].copy_from_slice(&compressed.to_le_bytes());
        block[CHECKSUM + 5..CHECKSUM + HEADER].copy_from_slice(&size.to_le_bytes());
        let end = CHECKSUM + HEADER + written;
        let checksum = cityhash_rs::cityhash_102_128(&block[CHECKSUM..end]).rotate_right(64);
        block[..CHECKSUM].copy_from_slice(&checksum.to_le_bytes());
        Bytes::copy_from_slice(&block[..end])
    })
}

/// The size of a block's data, uncompressed.
pub fn size(block: &[u8]) -> usize {
    u32::from_le_bytes(
        block[CHECKSUM + 5..CHECKSUM + HEADER]
            .try_into()
            .expect("four bytes"),
    ) as usize
}

/// The data of a block made by [`compress`].
pub fn decompress(block: &[u8]) -> Bytes {
    let size = size(block);
    let mut data = vec![0; size];
    let read = lz4_flex::block::decompress_into(&block[CHECKSUM + HEADER..], &mut data)
        .expect("a block this sink compressed itself");
    assert_eq!(read, size, "a block this sink compressed itself");
    Bytes::from(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_hold_their_data_with_clickhouses_framing() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let block = compress(&data);
        assert!(block.len() < data.len() / 2, "{} bytes", block.len());
        assert_eq!(block[16], 0x82);
        let compressed = u32::from_le_bytes(block[17..21].try_into().unwrap()) as usize;
        assert_eq!(compressed, block.len() - 16);
        assert_eq!(
            u32::from_le_bytes(block[21..25].try_into().unwrap()) as usize,
            data.len()
        );
        assert_eq!(
            u128::from_le_bytes(block[..16].try_into().unwrap()),
            cityhash_rs::cityhash_102_128(&block[16..]).rotate_right(64)
        );
        assert_eq!(size(&block), data.len());
        assert_eq!(decompress(&block), data);
        assert_eq!(decompress(&compress(&[])), Bytes::new());
    }
}
