//! A readable snapshot of what a database holds in schemas `public` and `cdc`: relations with
//! their columns, constraints, indexes, functions and comments, in the formats of `expected`.

use tokio_postgres::Client;

const SCHEMAS: &str = "n.nspname IN ('public', 'cdc')";

/// The whole catalog of a database, section by section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub relations: Vec<String>,
    /// Generated-column expressions: (`schema.table.column`, `pg_get_expr` text).
    pub generated: Vec<(String, String)>,
    pub constraints: Vec<String>,
    pub indexes: Vec<String>,
    pub functions: Vec<String>,
    pub comments: Vec<String>,
    /// `schema.table object oid` for every table, view and index (an index under its table),
    /// to prove objects were not dropped and recreated.
    pub oids: Vec<String>,
}

impl Catalog {
    /// Drop every line about the given relations (`schema.name`).
    pub fn without(&self, relations: &[&str]) -> Catalog {
        let mut c = self.clone();
        let mut keep = true;
        c.relations.retain(|l| {
            if !l.starts_with("  ") {
                let name = l.split_whitespace().nth(1).unwrap_or_default();
                keep = !relations.contains(&name);
            }
            keep
        });
        let mentions = |l: &str| relations.iter().any(|r| l.starts_with(&format!("{r} ")));
        c.constraints.retain(|l| !mentions(l));
        c.indexes
            .retain(|l| !relations.iter().any(|r| l.contains(&format!(" ON {r} "))));
        c.oids.retain(|l| !mentions(l));
        c
    }
}

pub async fn snapshot(client: &Client) -> Catalog {
    let (relations, generated) = relations(client).await;
    Catalog {
        relations,
        generated,
        constraints: strings(
            client,
            &format!(
                "SELECT n.nspname || '.' || c.relname || ' ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
                   FROM pg_constraint co
                   JOIN pg_class c ON c.oid = co.conrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE {SCHEMAS}
                  ORDER BY n.nspname, c.relname, co.conname"
            ),
        )
        .await,
        indexes: strings(
            client,
            &format!(
                "SELECT pg_get_indexdef(i.indexrelid)
                   FROM pg_index i
                   JOIN pg_class c ON c.oid = i.indexrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE {SCHEMAS}
                    AND NOT EXISTS (SELECT 1 FROM pg_constraint co
                                     WHERE co.conindid = i.indexrelid AND co.conrelid = i.indrelid)
                  ORDER BY c.relname"
            ),
        )
        .await,
        functions: strings(
            client,
            &format!(
                "SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_arguments(p.oid)
                        || ') RETURNS ' || pg_get_function_result(p.oid) || ' LANGUAGE ' || l.lanname
                   FROM pg_proc p
                   JOIN pg_namespace n ON n.oid = p.pronamespace
                   JOIN pg_language l ON l.oid = p.prolang
                  WHERE {SCHEMAS}
                  ORDER BY 1"
            ),
        )
        .await,
        comments: strings(
            client,
            &format!(
                "SELECT n.nspname || '.' || c.relname
                        || CASE WHEN d.objsubid > 0 THEN '.' || a.attname ELSE '' END
                        || ': ' || d.description
                   FROM pg_description d
                   JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid
                  WHERE {SCHEMAS}
                  ORDER BY 1"
            ),
        )
        .await,
        oids: strings(
            client,
            &format!(
                "SELECT n.nspname || '.' || COALESCE(t.relname, c.relname) || ' ' || c.relname
                        || ' ' || c.oid::text
                   FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   LEFT JOIN pg_index i ON i.indexrelid = c.oid
                   LEFT JOIN pg_class t ON t.oid = i.indrelid
                  WHERE {SCHEMAS} AND c.relkind IN ('r', 'p', 'v', 'm', 'i')
                  ORDER BY 1"
            ),
        )
        .await,
    }
}

async fn strings(client: &Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("catalog query failed: {e}\n{sql}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn relations(client: &Client) -> (Vec<String>, Vec<(String, String)>) {
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname, c.relname, c.relkind::text, a.attname,
                        format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attgenerated::text,
                        pg_get_expr(d.adbin, d.adrelid)
                   FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                   LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
                  WHERE {SCHEMAS} AND c.relkind IN ('r', 'p', 'v', 'm')
                  ORDER BY c.relkind IN ('v', 'm'), n.nspname, c.relname, a.attnum"
            ),
            &[],
        )
        .await
        .expect("read columns");
    let mut lines = Vec::new();
    let mut generated = Vec::new();
    let mut current = String::new();
    for r in &rows {
        let (schema, rel, kind): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let qualified = format!("{schema}.{rel}");
        if qualified != current {
            let word = if kind == "v" || kind == "m" {
                "view"
            } else {
                "table"
            };
            lines.push(format!("{word} {qualified}"));
            current = qualified.clone();
        }
        let (col, ty, not_null, gen_kind, expr): (String, String, bool, String, Option<String>) =
            (r.get(3), r.get(4), r.get(5), r.get(6), r.get(7));
        let mut line = format!("  {col} {ty}");
        if not_null {
            line.push_str(" not null");
        }
        match (gen_kind.as_str(), expr) {
            ("s", Some(e)) => {
                let label = match e.as_str() {
                    e if e == super::expected::HOURS_EXPR => "HOURS".to_string(),
                    e if e == super::expected::EMPLOYEE_COST_EXPR => "EMPLOYEE_COST".to_string(),
                    other => other.to_string(),
                };
                line.push_str(&format!(" generated {label}"));
                generated.push((format!("{qualified}.{col}"), e));
            }
            (_, Some(e)) => line.push_str(&format!(" default {e}")),
            _ => {}
        }
        lines.push(line);
    }
    (lines, generated)
}

/// Assert two snapshots are equal, section by section.
pub fn assert_same(expected: &Catalog, actual: &Catalog) {
    assert_lines("tables and views", &expected.relations, &actual.relations);
    assert_eq!(expected.generated, actual.generated, "generated columns");
    assert_lines("constraints", &expected.constraints, &actual.constraints);
    assert_lines("indexes", &expected.indexes, &actual.indexes);
    assert_lines("functions", &expected.functions, &actual.functions);
    assert_lines("comments", &expected.comments, &actual.comments);
    assert_lines("relation oids", &expected.oids, &actual.oids);
}

/// Assert two line lists are equal, showing what is missing and what is unexpected.
pub fn assert_lines(what: &str, expected: &[String], actual: &[String]) {
    if expected == actual {
        return;
    }
    let missing: Vec<&String> = expected.iter().filter(|l| !actual.contains(l)).collect();
    let extra: Vec<&String> = actual.iter().filter(|l| !expected.contains(l)).collect();
    let first = expected
        .iter()
        .zip(actual)
        .position(|(e, a)| e != a)
        .unwrap_or(expected.len().min(actual.len()));
    panic!(
        "{what} differ (first difference at line {first}: expected {:?}, got {:?})\n\
         missing:\n  {}\nunexpected:\n  {}",
        expected.get(first),
        actual.get(first),
        missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        extra
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}
