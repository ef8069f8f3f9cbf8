//! Which folder of a mongodump output holds a database's collections.
//!
//! `mongodump --out OUT` writes `OUT/<database>/<collection>.bson` (+ `.metadata.json`), so
//! "the dump folder" can mean `OUT` or `OUT/<database>`. Both are accepted: a folder holding
//! `.bson` or `.metadata.json` files is the database folder itself; otherwise its
//! `<database>` subfolder is taken when there is one. A folder that holds only other
//! databases' dumps (or a compressed dump) is an error that says what was found; a folder that
//! cannot be read, or an empty one, is passed through for the loader to report.
//!
//! Standard library only: the `mongosim` binary includes this file too (`--load-dump`).

use std::path::{Path, PathBuf};

/// A resolved dump folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpDir {
    /// The folder holding the database's `.bson` files.
    pub dir: PathBuf,
    /// `true` when the given folder was mongodump's output root and `dir` its database subfolder.
    pub descended: bool,
}

impl DumpDir {
    /// One line for the user: which folder is read, and why when it is a subfolder.
    pub fn describe(&self, database: &str) -> String {
        if self.descended {
            format!(
                "{} (the {database:?} folder of the mongodump output {})",
                self.dir.display(),
                self.dir.parent().unwrap_or(&self.dir).display()
            )
        } else {
            self.dir.display().to_string()
        }
    }
}

fn is_dump_file(name: &str) -> bool {
    name.ends_with(".bson") || name.ends_with(".metadata.json")
}

/// The names of `dir`'s entries (files and folders), sorted.
fn entries(dir: &Path) -> Result<Vec<(String, bool)>, String> {
    let read =
        std::fs::read_dir(dir).map_err(|e| format!("{}: cannot read: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| format!("{}: cannot read: {e}", dir.display()))?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        out.push((entry.file_name().to_string_lossy().into_owned(), is_dir));
    }
    out.sort();
    Ok(out)
}

/// Resolve `dir` (mongodump's output root or one database folder of it) for `database`.
pub fn resolve(dir: &Path, database: &str) -> Result<DumpDir, String> {
    let as_given = DumpDir {
        dir: dir.to_path_buf(),
        descended: false,
    };
    let Ok(here) = entries(dir) else {
        return Ok(as_given);
    };
    if here
        .iter()
        .any(|(name, is_dir)| !is_dir && is_dump_file(name))
    {
        return Ok(as_given);
    }
    let sub = dir.join(database);
    if sub.is_dir() {
        return Ok(DumpDir {
            dir: sub,
            descended: true,
        });
    }
    let gzipped = here
        .iter()
        .any(|(name, _)| name.ends_with(".bson.gz") || name.ends_with(".metadata.json.gz"));
    if gzipped {
        return Err(format!(
            "{}: the dump is compressed (mongodump --gzip); run mongodump without --gzip, or \
             gunzip the files first",
            dir.display()
        ));
    }
    // Subfolders that look like database folders: another database's dump, not this one.
    let databases: Vec<String> = here
        .iter()
        .filter(|(_, is_dir)| *is_dir)
        .filter(|(name, _)| {
            entries(&dir.join(name))
                .map(|e| e.iter().any(|(f, d)| !d && is_dump_file(f)))
                .unwrap_or(false)
        })
        .map(|(name, _)| name.clone())
        .collect();
    if databases.is_empty() {
        return Ok(as_given);
    }
    Err(format!(
        "{}: no .bson files and no {database:?} folder (mongodump writes \
         OUT/<database>/<collection>.bson: give OUT or OUT/{database}); it holds dumps of the \
         databases {}: give one of those folders, or dump {database:?}",
        dir.display(),
        databases.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn a_database_folder_is_taken_as_is() {
        let t = tempfile::tempdir().unwrap();
        touch(&t.path().join("dailyreports.bson"));
        let d = resolve(t.path(), "paving").unwrap();
        assert_eq!(d.dir, t.path());
        assert!(!d.descended);
    }

    #[test]
    fn the_output_root_descends_into_the_database_folder() {
        let t = tempfile::tempdir().unwrap();
        touch(&t.path().join("paving/dailyreports.bson"));
        touch(&t.path().join("concrete/dailyreports.bson"));
        let d = resolve(t.path(), "paving").unwrap();
        assert_eq!(d.dir, t.path().join("paving"));
        assert!(d.descended);
        assert!(d.describe("paving").contains("\"paving\" folder"));
    }

    #[test]
    fn a_root_without_the_database_names_what_it_holds() {
        let t = tempfile::tempdir().unwrap();
        touch(&t.path().join("concrete/dailyreports.metadata.json"));
        let err = resolve(t.path(), "paving").unwrap_err();
        assert!(
            err.contains("no .bson files and no \"paving\" folder"),
            "{err}"
        );
        assert!(err.contains("databases concrete"), "{err}");
    }

    #[test]
    fn a_missing_or_empty_folder_is_left_to_the_loader() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("nope");
        assert_eq!(resolve(&missing, "paving").unwrap().dir, missing);
        assert_eq!(resolve(t.path(), "paving").unwrap().dir, t.path());
    }
}
