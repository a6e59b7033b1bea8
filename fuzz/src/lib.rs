//! What the fuzz targets share: an input read as cut offsets, then a stream to cut.
//! No target logic here, no dependency on rgun.

/// Reads `data` as one byte `k` (taken modulo 16), `k` cut offsets of two bytes each
/// (little-endian), then the stream; `None` when it is too short for its offsets.
pub fn cuts_and_stream(data: &[u8]) -> Option<(Vec<usize>, &[u8])> {
    let (&k, rest) = data.split_first()?;
    let k = (k % 16) as usize;
    if rest.len() < 2 * k {
        return None;
    }
    let (cuts, stream) = rest.split_at(2 * k);
    let cuts = cuts
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize)
        .collect();
    Some((cuts, stream))
}
