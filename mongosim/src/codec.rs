//! OP_MSG framing (opcode 2013): header, flag bits, kind-0 body and kind-1 document sequences.

use std::io::{self, ErrorKind};

use bson::Document;
use tokio::io::{AsyncRead, AsyncReadExt};

pub const OP_MSG: i32 = 2013;
pub const MAX_MESSAGE_SIZE: usize = 48_000_000;
pub const FLAG_CHECKSUM: u32 = 1;
pub const FLAG_MORE_TO_COME: u32 = 1 << 1;

/// One decoded OP_MSG request.
#[derive(Debug)]
pub struct Message {
    pub request_id: i32,
    pub flags: u32,
    /// The kind-0 section: the command document.
    pub body: Document,
    /// Kind-1 sections: `(identifier, documents)`, e.g. `("documents", [...])` for insert.
    pub sequences: Vec<(String, Vec<Document>)>,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.into())
}

fn read_i32(b: &[u8], at: usize) -> io::Result<i32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(i32::from_le_bytes)
        .ok_or_else(|| bad("truncated int32"))
}

fn read_doc(b: &[u8], at: usize) -> io::Result<(Document, usize)> {
    let len = read_i32(b, at)?;
    if len < 5 || at + len as usize > b.len() {
        return Err(bad("BSON document length out of range"));
    }
    let end = at + len as usize;
    let doc = Document::from_reader(&b[at..end]).map_err(|e| bad(format!("bad BSON: {e}")))?;
    Ok((doc, end))
}

/// Read one message. `Ok(None)` on a clean end of stream before a header.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Message>> {
    let mut header = [0u8; 16];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = read_i32(&header, 0)?;
    let request_id = read_i32(&header, 4)?;
    let op = read_i32(&header, 12)?;
    if len < 21 || len as usize > MAX_MESSAGE_SIZE {
        return Err(bad(format!("message length {len} out of range")));
    }
    let mut body = vec![0u8; len as usize - 16];
    r.read_exact(&mut body).await?;
    if op != OP_MSG {
        return Err(bad(format!(
            "unsupported opcode {op} (only OP_MSG is spoken)"
        )));
    }
    let flags = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
    if flags & !(FLAG_CHECKSUM | FLAG_MORE_TO_COME | (1 << 16)) & 0xffff != 0 {
        return Err(bad(format!("unknown required OP_MSG flag bits {flags:#x}")));
    }
    let end = if flags & FLAG_CHECKSUM != 0 {
        body.len()
            .checked_sub(4)
            .ok_or_else(|| bad("missing checksum"))?
    } else {
        body.len()
    };
    let mut at = 4;
    let mut main = None;
    let mut sequences = Vec::new();
    while at < end {
        let kind = body[at];
        at += 1;
        match kind {
            0 => {
                let (d, next) = read_doc(&body[..end], at)?;
                if main.replace(d).is_some() {
                    return Err(bad("more than one kind-0 section"));
                }
                at = next;
            }
            1 => {
                let size = read_i32(&body, at)?;
                if size < 5 || at + size as usize > end {
                    return Err(bad("kind-1 section size out of range"));
                }
                let sec_end = at + size as usize;
                let mut p = at + 4;
                let nul = body[p..sec_end]
                    .iter()
                    .position(|&c| c == 0)
                    .ok_or_else(|| bad("unterminated sequence identifier"))?;
                let ident = String::from_utf8(body[p..p + nul].to_vec())
                    .map_err(|_| bad("identifier is not UTF-8"))?;
                p += nul + 1;
                let mut docs = Vec::new();
                while p < sec_end {
                    let (d, next) = read_doc(&body[..sec_end], p)?;
                    docs.push(d);
                    p = next;
                }
                sequences.push((ident, docs));
                at = sec_end;
            }
            k => return Err(bad(format!("unknown section kind {k}"))),
        }
    }
    let body = main.ok_or_else(|| bad("OP_MSG without a kind-0 section"))?;
    Ok(Some(Message {
        request_id,
        flags,
        body,
        sequences,
    }))
}

/// Encode a reply: OP_MSG, flags 0, one kind-0 section.
pub fn encode_reply(request_id: i32, response_to: i32, doc: &Document) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    doc.to_writer(&mut out)
        .map_err(|e| io::Error::new(ErrorKind::InvalidData, e.to_string()))?;
    let len = out.len() as i32;
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&request_id.to_le_bytes());
    out[8..12].copy_from_slice(&response_to.to_le_bytes());
    out[12..16].copy_from_slice(&OP_MSG.to_le_bytes());
    Ok(out)
}

/// Encode a reply whose kind-0 body is already encoded BSON.
pub fn encode_reply_bytes(request_id: i32, response_to: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + body.len());
    let len = (21 + body.len()) as i32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&OP_MSG.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[tokio::test]
    async fn round_trip_with_sequence() {
        let body = doc! {"insert": "c", "$db": "d"};
        let mut msg = encode_reply(7, 0, &body).unwrap();
        // append a kind-1 section by hand
        let d1 = doc! {"_id": 1}.to_vec().unwrap();
        let mut sec = Vec::new();
        sec.extend_from_slice(&((4 + 10 + d1.len()) as i32).to_le_bytes());
        sec.extend_from_slice(b"documents\0");
        sec.extend_from_slice(&d1);
        msg.push(1);
        msg.extend_from_slice(&sec);
        let len = msg.len() as i32;
        msg[0..4].copy_from_slice(&len.to_le_bytes());
        let m = read_message(&mut &msg[..]).await.unwrap().unwrap();
        assert_eq!(m.request_id, 7);
        assert_eq!(m.body, body);
        assert_eq!(m.sequences[0].0, "documents");
        assert_eq!(m.sequences[0].1, vec![doc! {"_id": 1}]);
    }

    #[tokio::test]
    async fn garbage_is_an_error_never_a_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = encode_reply(1, 0, &doc! {"ping": 1, "$db": "a"}).unwrap();
        for _ in 0..20_000 {
            let mut m = valid.clone();
            let flips = (next() % 6) as usize + 1;
            for _ in 0..flips {
                let at = (next() as usize) % m.len();
                m[at] = next() as u8;
            }
            if next() % 4 == 0 {
                let cut = (next() as usize) % m.len();
                m.truncate(cut);
            }
            let _ = read_message(&mut &m[..]).await;
        }
    }
}
