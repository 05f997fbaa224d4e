//! A valid zstd frame made only of raw (stored) blocks.
//!
//! Real zstd bytes without a compressor dependency: any conforming decoder
//! (e.g. `zstd -d`) accepts it, which is all a registry mirror needs to see.

const MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// Raw blocks may not exceed Block_Maximum_Size (128 KiB).
const MAX_BLOCK: usize = 128 * 1024;

pub fn encode_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16 + data.len() / MAX_BLOCK * 3);
    out.extend_from_slice(&MAGIC);
    // Frame_Header_Descriptor: 8-byte Frame_Content_Size, Single_Segment (so
    // no Window_Descriptor), no checksum, no dictionary.
    out.push(0b1110_0000);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut chunks: Vec<&[u8]> = data.chunks(MAX_BLOCK).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.iter().enumerate() {
        // Block_Header: bit 0 Last_Block, bits 1-2 Block_Type (0 = Raw),
        // bits 3-23 Block_Size; 3 bytes little-endian.
        let header = (chunk.len() as u32) << 3 | u32::from(i == last);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(chunk);
    }
    out
}
