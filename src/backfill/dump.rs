//! Reading a mongodump folder: `<collection>.bson` is a plain concatenation of BSON documents
//! (each starts with its own little-endian i32 length), next to `<collection>.metadata.json`.
//!
//! Files are streamed through a bounded buffer, one document at a time; a file is never loaded
//! whole. Every error names the file and the byte offset of the document that broke, so an
//! operator can tell a truncated copy from a garbled one. Blocking I/O: run it on a blocking
//! thread.

use std::fs::File;
use std::io::{self, BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bson::Document;
use tokio::sync::mpsc;

use super::chunk::Chunk;
use super::store::ResumeAt;
use super::{BackfillError, DocStamp};
use crate::event::Entity;

/// The smallest BSON document: length, terminating NUL.
const MIN_DOC_LEN: usize = 5;
/// The server's 16 MiB document limit plus the headroom mongodump allows.
const MAX_DOC_LEN: usize = 16 * 1024 * 1024 + 16 * 1024;
/// Read buffer per file.
const BUF_BYTES: usize = 256 * 1024;

/// A broken dump file: which file, where, and what was found there.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{file}: truncated at byte offset {offset}: {detail}")]
    Truncated {
        file: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error("{file}: corrupt document at byte offset {offset}: {detail}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        detail: String,
    },
}

/// What the dump folder holds for one collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DumpEntry {
    /// `<coll>.bson` with at least one byte.
    Data(PathBuf),
    /// No `.bson` (only metadata, or nothing at all) or an empty one.
    Missing { reason: &'static str },
}

/// Locate a collection's `.bson` in a dump folder.
pub(crate) fn locate(dir: &Path, collection: &str) -> Result<DumpEntry, DumpError> {
    let file = dir.join(format!("{collection}.bson"));
    match std::fs::metadata(&file) {
        Ok(m) if m.len() == 0 => Ok(DumpEntry::Missing {
            reason: "empty .bson file",
        }),
        Ok(_) => Ok(DumpEntry::Data(file)),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let meta = dir.join(format!("{collection}.metadata.json"));
            Ok(DumpEntry::Missing {
                reason: if meta.exists() {
                    "no .bson file (metadata only)"
                } else {
                    "not in the dump"
                },
            })
        }
        Err(source) => Err(DumpError::Io { file, source }),
    }
}

/// A `.bson` file read document by document from a byte offset.
pub(crate) struct DumpReader {
    file: PathBuf,
    reader: BufReader<File>,
    offset: u64,
    len: u64,
    buf: Vec<u8>,
}

impl DumpReader {
    /// Open `file` and position it at `offset` (0, or the end of a completed chunk).
    pub fn open(file: &Path, offset: u64) -> Result<DumpReader, DumpError> {
        let io = |source| DumpError::Io {
            file: file.to_path_buf(),
            source,
        };
        let f = File::open(file).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        if offset > len {
            return Err(DumpError::Truncated {
                file: file.to_path_buf(),
                offset,
                detail: format!(
                    "the backfill checkpoint is past the end of the file ({len} bytes); \
                     the dump changed since the last run (use --restart)"
                ),
            });
        }
        let mut reader = BufReader::with_capacity(BUF_BYTES, f);
        reader.seek(SeekFrom::Start(offset)).map_err(io)?;
        Ok(DumpReader {
            file: file.to_path_buf(),
            reader,
            offset,
            len,
            buf: Vec::new(),
        })
    }

    /// The byte offset just past the last document returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Read the next document's length header; `None` at a clean end of file.
    fn next_len(&mut self) -> Result<Option<usize>, DumpError> {
        let mut len = [0u8; 4];
        let got = read_full(&mut self.reader, &mut len).map_err(|source| DumpError::Io {
            file: self.file.clone(),
            source,
        })?;
        match got {
            0 => return Ok(None),
            4 => {}
            n => {
                return Err(self.truncated(format!(
                    "{n} stray byte(s) after the last document, not a length header"
                )));
            }
        }
        let n = i32::from_le_bytes(len);
        let n = usize::try_from(n).unwrap_or(0);
        if !(MIN_DOC_LEN..=MAX_DOC_LEN).contains(&n) {
            return Err(self.corrupt(format!(
                "document length {} is outside {MIN_DOC_LEN}..={MAX_DOC_LEN}",
                i32::from_le_bytes(len)
            )));
        }
        let remaining = self.len.saturating_sub(self.offset);
        if n as u64 > remaining {
            return Err(self.truncated(format!(
                "the document declares {n} bytes but only {remaining} remain"
            )));
        }
        Ok(Some(n))
    }

    /// The next document, or `None` at the end of the file.
    pub(crate) fn next_doc(&mut self) -> Result<Option<Document>, DumpError> {
        let Some(n) = self.next_len()? else {
            return Ok(None);
        };
        self.buf.clear();
        self.buf.resize(n, 0);
        self.buf[..4].copy_from_slice(&(n as i32).to_le_bytes());
        self.reader
            .read_exact(&mut self.buf[4..])
            .map_err(|e| match e.kind() {
                ErrorKind::UnexpectedEof => {
                    self.truncated(format!("the file ended inside a document of {n} bytes"))
                }
                _ => DumpError::Io {
                    file: self.file.clone(),
                    source: e,
                },
            })?;
        let doc = Document::from_reader(&self.buf[..]).map_err(|e| self.corrupt(e.to_string()))?;
        self.offset += n as u64;
        Ok(Some(doc))
    }

    /// Count the documents from the current offset to the end by walking the length headers
    /// only (no parsing); leaves the reader where it was. Finds truncation before any work.
    pub(crate) fn count_remaining(&mut self) -> Result<u64, DumpError> {
        let start = self.offset;
        let mut count = 0u64;
        while let Some(n) = self.next_len()? {
            self.reader
                .seek_relative(n as i64 - 4)
                .map_err(|source| DumpError::Io {
                    file: self.file.clone(),
                    source,
                })?;
            self.offset += n as u64;
            count += 1;
        }
        self.reader
            .seek(SeekFrom::Start(start))
            .map_err(|source| DumpError::Io {
                file: self.file.clone(),
                source,
            })?;
        self.offset = start;
        Ok(count)
    }

    fn truncated(&self, detail: String) -> DumpError {
        DumpError::Truncated {
            file: self.file.clone(),
            offset: self.offset,
            detail,
        }
    }

    fn corrupt(&self, detail: String) -> DumpError {
        DumpError::Corrupt {
            file: self.file.clone(),
            offset: self.offset,
            detail,
        }
    }
}

/// Read `reader` to the end in chunks of `chunk_size` documents into `tx` (blocking: run on a
/// blocking thread). Stops at the first error, which is sent, or when the receiver is gone.
pub(crate) fn produce(
    mut reader: DumpReader,
    entity: Entity,
    chunk_size: usize,
    stamp: DocStamp,
    tx: mpsc::Sender<Result<Chunk, BackfillError>>,
) {
    loop {
        let mut chunk = Chunk::new(ResumeAt::Offset(reader.offset()));
        while chunk.read < chunk_size as u64 {
            match reader.next_doc() {
                Ok(Some(d)) => chunk.push(entity, d, &stamp),
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.blocking_send(Err(BackfillError::Dump(e)));
                    return;
                }
            }
        }
        if chunk.read == 0 {
            return;
        }
        chunk.at = ResumeAt::Offset(reader.offset());
        if tx.blocking_send(Ok(chunk)).is_err() {
            return;
        }
    }
}

/// Like `read_exact`, but reports how many bytes were read before a clean end of file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;
    use std::io::Write;

    fn write_docs(path: &Path, docs: &[Document]) -> Vec<u64> {
        let mut f = File::create(path).unwrap();
        let mut offsets = vec![];
        let mut at = 0u64;
        for d in docs {
            let bytes = bson::serialize_to_vec(d).unwrap();
            at += bytes.len() as u64;
            offsets.push(at);
            f.write_all(&bytes).unwrap();
        }
        offsets
    }

    fn docs(n: i32) -> Vec<Document> {
        (0..n)
            .map(|i| doc! {"_id": i, "name": format!("doc {i}")})
            .collect()
    }

    #[test]
    fn reads_every_document_and_resumes_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.bson");
        let ends = write_docs(&p, &docs(5));
        let mut r = DumpReader::open(&p, 0).unwrap();
        assert_eq!(r.count_remaining().unwrap(), 5);
        let mut n = 0;
        while let Some(d) = r.next_doc().unwrap() {
            assert_eq!(d.get_i32("_id").unwrap(), n);
            n += 1;
            assert_eq!(r.offset(), ends[n as usize - 1]);
        }
        assert_eq!(n, 5);
        let mut r = DumpReader::open(&p, ends[2]).unwrap();
        assert_eq!(r.count_remaining().unwrap(), 2);
        assert_eq!(r.next_doc().unwrap().unwrap().get_i32("_id").unwrap(), 3);
    }

    #[test]
    fn a_truncated_file_names_the_offset_of_the_broken_document() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.bson");
        let ends = write_docs(&p, &docs(3));
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(ends[2] - 3).unwrap();
        let mut r = DumpReader::open(&p, 0).unwrap();
        let e = r.count_remaining().unwrap_err().to_string();
        assert!(e.contains("c.bson"), "{e}");
        assert!(e.contains(&format!("byte offset {}", ends[1])), "{e}");
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn garbage_is_corrupt_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.bson");
        let ends = write_docs(&p, &docs(2));
        let mut bytes = std::fs::read(&p).unwrap();
        // Break the element type byte of the second document's first field.
        bytes[ends[0] as usize + 4] = 0x7f;
        std::fs::write(&p, &bytes).unwrap();
        let mut r = DumpReader::open(&p, 0).unwrap();
        assert!(r.next_doc().unwrap().is_some());
        let e = r.next_doc().unwrap_err().to_string();
        assert!(
            e.contains(&format!("corrupt document at byte offset {}", ends[0])),
            "{e}"
        );
    }

    #[test]
    fn missing_and_empty_collections_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.metadata.json"), "{}").unwrap();
        std::fs::write(dir.path().join("b.bson"), "").unwrap();
        assert!(matches!(
            locate(dir.path(), "a").unwrap(),
            DumpEntry::Missing { reason } if reason.contains("metadata only")
        ));
        assert!(matches!(
            locate(dir.path(), "b").unwrap(),
            DumpEntry::Missing { reason } if reason.contains("empty")
        ));
        assert!(matches!(
            locate(dir.path(), "c").unwrap(),
            DumpEntry::Missing { .. }
        ));
    }
}
