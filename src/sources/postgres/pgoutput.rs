//! The subset of PostgreSQL's `pgoutput` logical-decoding format (protocol version 1) that
//! change capture of one table needs.
//!
//! dishflow reads the messages through `pg_logical_slot_get_binary_changes(...)` on an
//! ordinary connection (the synchronous `postgres` client has no replication protocol), one
//! message per row. Only the message kinds below are interpreted; the others (origin, type,
//! logical message) are skipped. Column values are taken in text format, which is what
//! `pgoutput` sends unless binary transfer is requested.
//!
//! Reference: PostgreSQL documentation, "Logical Replication Message Formats".

use anyhow::{Result, anyhow, bail};

/// A decoded `pgoutput` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Start of a transaction: the LSN of its commit record and its transaction id.
    Begin {
        /// LSN of the transaction's commit record.
        final_lsn: u64,
        /// Transaction id (32 bits, as the server sends it).
        xid: u32,
    },
    /// End of the transaction begun last.
    Commit,
    /// Description of a table, sent before its first change in a session and after DDL.
    Relation(Relation),
    /// A new row.
    Insert {
        /// Table.
        relation: u32,
        /// The row.
        new: Tuple,
    },
    /// A changed row; `old` is the old key (or whole row with REPLICA IDENTITY FULL) when the
    /// key changed or the identity is FULL, `None` otherwise.
    Update {
        /// Table.
        relation: u32,
        /// Old key or row, if sent.
        old: Option<Tuple>,
        /// The new row.
        new: Tuple,
    },
    /// A deleted row, identified by its key (or whole row with REPLICA IDENTITY FULL).
    Delete {
        /// Table.
        relation: u32,
        /// Key (or row) of the deleted row.
        old: Tuple,
    },
    /// Tables emptied by TRUNCATE.
    Truncate {
        /// Tables.
        relations: Vec<u32>,
    },
    /// Any other message kind (origin, type, logical message): not needed here.
    Other(u8),
}

/// A table as described by a Relation message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID, used by the change messages.
    pub id: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Column names, in the order of the tuples.
    pub columns: Vec<String>,
}

impl Relation {
    /// Position of the column `name`.
    pub fn column(&self, name: &str) -> Result<usize> {
        self.columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| anyhow!("{}.{} has no column {name}", self.namespace, self.name))
    }
}

/// One column value of a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value that was not sent.
    Unchanged,
    /// A value in text format.
    Text(String),
}

/// The column values of a row, in the relation's column order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple(pub Vec<Value>);

impl Tuple {
    /// The value of column `index` as text, `None` for NULL; an error when it is absent or
    /// an unchanged TOASTed value (not sent).
    pub fn value(&self, index: usize) -> Result<Option<&str>> {
        match self.0.get(index) {
            Some(Value::Text(text)) => Ok(Some(text)),
            Some(Value::Null) => Ok(None),
            other => Err(anyhow!("column {index} is {other:?}, not a value")),
        }
    }

    /// The text of column `index`; an error when it is absent, NULL or unchanged.
    pub fn text(&self, index: usize) -> Result<&str> {
        match self.0.get(index) {
            Some(Value::Text(text)) => Ok(text),
            other => Err(anyhow!("column {index} is {other:?}, not a text value")),
        }
    }
}

/// A cursor over one message's bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            bail!("pgoutput message truncated");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into()?))
    }
    fn cstring(&mut self) -> Result<String> {
        let end = self
            .0
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| anyhow!("pgoutput string not terminated"))?;
        let text = std::str::from_utf8(&self.0[..end])
            .map_err(|e| anyhow!("pgoutput string not UTF-8: {e}"))?
            .to_string();
        self.0 = &self.0[end + 1..];
        Ok(text)
    }
    fn tuple(&mut self) -> Result<Tuple> {
        let columns = self.u16()?;
        let mut values = Vec::with_capacity(usize::from(columns));
        for _ in 0..columns {
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = usize::try_from(self.u32()?)?;
                    let text = std::str::from_utf8(self.take(len)?)
                        .map_err(|e| anyhow!("pgoutput column value not UTF-8: {e}"))?;
                    Value::Text(text.to_string())
                }
                kind => bail!("pgoutput: unsupported column kind {:?}", kind as char),
            });
        }
        Ok(Tuple(values))
    }
}

/// Decodes one `pgoutput` (protocol version 1) message.
pub fn parse(bytes: &[u8]) -> Result<Message> {
    let mut r = Reader(bytes);
    let kind = r.u8()?;
    Ok(match kind {
        b'B' => {
            let final_lsn = r.u64()?;
            let _commit_time = r.u64()?;
            let xid = r.u32()?;
            Message::Begin { final_lsn, xid }
        }
        b'C' => Message::Commit,
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstring()?;
            let name = r.cstring()?;
            let _replica_identity = r.u8()?;
            let count = r.u16()?;
            let mut columns = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let _flags = r.u8()?;
                columns.push(r.cstring()?);
                let _type_oid = r.u32()?;
                let _type_modifier = r.u32()?;
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32()?;
            expect(&mut r, b'N')?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut marker = r.u8()?;
            if marker == b'K' || marker == b'O' {
                old = Some(r.tuple()?);
                marker = r.u8()?;
            }
            if marker != b'N' {
                bail!("pgoutput update: expected 'N', got {:?}", marker as char);
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let marker = r.u8()?;
            if marker != b'K' && marker != b'O' {
                bail!(
                    "pgoutput delete: expected 'K' or 'O', got {:?}",
                    marker as char
                );
            }
            Message::Delete {
                relation,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let count = r.u32()?;
            let _options = r.u8()?;
            let relations = (0..count).map(|_| r.u32()).collect::<Result<_>>()?;
            Message::Truncate { relations }
        }
        other => Message::Other(other),
    })
}

fn expect(r: &mut Reader<'_>, marker: u8) -> Result<()> {
    let got = r.u8()?;
    if got != marker {
        bail!(
            "pgoutput: expected {:?}, got {:?}",
            marker as char,
            got as char
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `scripts/fuzz.sh` (target `pgoutput`): errors about a column's kind or a
    /// string's encoding did not say they came from a pgoutput message.
    #[test]
    fn every_error_says_it_is_a_pgoutput_message() {
        let unknown_kind = b"U\0\0@\x01N\0\x03t\0\0\0\x012t\0\0\0\x01!ct\0\0\0\x01r";
        let bad_text = b"I\0\0@\x01N\0\x01t\0\0\0\x01\xff";
        let bad_name = b"R\0\0@\x01\xff\0";
        for (bytes, expected) in [
            (&unknown_kind[..], "pgoutput: unsupported column kind 'c'"),
            (&bad_text[..], "pgoutput column value not UTF-8"),
            (&bad_name[..], "pgoutput string not UTF-8"),
        ] {
            let error = parse(bytes).expect_err("not a valid message").to_string();
            assert!(error.starts_with(expected), "{error}");
        }
    }

    // Messages captured from PostgreSQL 15 (`pg_logical_slot_get_binary_changes` on the
    // seed table): insert id 1, update of a non-key column, update of the key, delete.
    const BEGIN: &[u8] = b"B\0\0\0\0\x02\x1A\xC8\xD0\0\x03\x03\xC9\xE5u+\x17\0\0\x02\xDA";
    const RELATION: &[u8] = b"R\0\0@\x05public\0subscribers_restaurants\0d\0\x03\x01id\0\0\0\0\x17\xFF\xFF\xFF\xFF\0client_id\0\0\0\x04\x13\xFF\xFF\xFF\xFF\0restaurant_id\0\0\0\x04\x13\xFF\xFF\xFF\xFF";
    const INSERT: &[u8] = b"I\0\0@\x05N\0\x03t\0\0\0\x011t\0\0\0\x02c1t\0\0\0\x02r1";
    const UPDATE: &[u8] = b"U\0\0@\x05N\0\x03t\0\0\0\x011t\0\0\0\x02c1t\0\0\0\x02r2";
    const UPDATE_KEY: &[u8] =
        b"U\0\0@\x05K\0\x03t\0\0\0\x011nnN\0\x03t\0\0\0\x041001t\0\0\0\x02c1t\0\0\0\x02r2";
    const DELETE: &[u8] = b"D\0\0@\x05K\0\x03t\0\0\0\x041001nn";
    const TRUNCATE: &[u8] = b"T\0\0\0\x01\0\0\0@\x05";

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn decodes_captured_messages() -> Result<()> {
        assert_eq!(
            parse(BEGIN)?,
            Message::Begin {
                final_lsn: 0x021A_C8D0,
                xid: 730
            }
        );
        let Message::Relation(relation) = parse(RELATION)? else {
            panic!("not a relation")
        };
        assert_eq!(relation.id, 0x4005);
        assert_eq!(
            (relation.namespace.as_str(), relation.name.as_str()),
            ("public", "subscribers_restaurants")
        );
        assert_eq!(relation.columns, ["id", "client_id", "restaurant_id"]);
        assert_eq!(relation.column("restaurant_id")?, 2);
        assert!(relation.column("nope").is_err());
        assert_eq!(
            parse(INSERT)?,
            Message::Insert {
                relation: 0x4005,
                new: Tuple(vec![text("1"), text("c1"), text("r1")])
            }
        );
        assert_eq!(
            parse(UPDATE)?,
            Message::Update {
                relation: 0x4005,
                old: None,
                new: Tuple(vec![text("1"), text("c1"), text("r2")])
            }
        );
        assert_eq!(
            parse(UPDATE_KEY)?,
            Message::Update {
                relation: 0x4005,
                old: Some(Tuple(vec![text("1"), Value::Null, Value::Null])),
                new: Tuple(vec![text("1001"), text("c1"), text("r2")])
            }
        );
        let Message::Delete { old, .. } = parse(DELETE)? else {
            panic!("not a delete")
        };
        assert_eq!(old.text(0)?, "1001");
        assert!(old.text(1).is_err(), "NULL is not text");
        assert_eq!(
            parse(TRUNCATE)?,
            Message::Truncate {
                relations: vec![0x4005]
            }
        );
        assert_eq!(parse(b"C\0")?, Message::Commit);
        assert_eq!(parse(b"Yxyz")?, Message::Other(b'Y'));
        Ok(())
    }

    #[test]
    fn truncated_or_malformed_messages_are_errors_not_panics() {
        for cut in 1..INSERT.len() {
            assert!(parse(&INSERT[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse(b"").is_err());
        assert!(parse(b"I\0\0@\x05X").is_err());
        assert!(parse(b"D\0\0@\x05N\0\0").is_err());
    }
}
