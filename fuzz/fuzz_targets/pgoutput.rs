//! The pgoutput message parser of the followed tables (`src/sources/postgres/pgoutput.rs`).
#![no_main]

use dishflow_fuzz::pgoutput::{Message, Tuple, Value, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        // A rejection says it is a pgoutput message that is wrong, and how.
        Err(error) => {
            let text = format!("{error:#}");
            assert!(
                text.starts_with("pgoutput"),
                "error without context: {text}"
            );
        }
        // Round trip: the message encoded again (what it does not keep set to zero) parses
        // to itself.
        Ok(message) => assert_eq!(parse(&encode(&message)).ok(), Some(message)),
    }
});

/// `message` in pgoutput's protocol version 1 (the fields the parser skips are zero).
fn encode(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    match message {
        Message::Begin { final_lsn, xid } => {
            out.push(b'B');
            out.extend(final_lsn.to_be_bytes());
            out.extend(0u64.to_be_bytes());
            out.extend(xid.to_be_bytes());
        }
        Message::Commit => out.push(b'C'),
        Message::Relation(relation) => {
            out.push(b'R');
            out.extend(relation.id.to_be_bytes());
            cstring(&mut out, &relation.namespace);
            cstring(&mut out, &relation.name);
            out.push(b'd');
            let count = u16::try_from(relation.columns.len()).expect("at most 65,535 columns");
            out.extend(count.to_be_bytes());
            for column in &relation.columns {
                out.push(0);
                cstring(&mut out, column);
                out.extend(0u32.to_be_bytes());
                out.extend(0u32.to_be_bytes());
            }
        }
        Message::Insert { relation, new } => {
            out.push(b'I');
            out.extend(relation.to_be_bytes());
            out.push(b'N');
            tuple(&mut out, new);
        }
        Message::Update { relation, old, new } => {
            out.push(b'U');
            out.extend(relation.to_be_bytes());
            if let Some(old) = old {
                out.push(b'O');
                tuple(&mut out, old);
            }
            out.push(b'N');
            tuple(&mut out, new);
        }
        Message::Delete { relation, old } => {
            out.push(b'D');
            out.extend(relation.to_be_bytes());
            out.push(b'K');
            tuple(&mut out, old);
        }
        Message::Truncate { relations } => {
            out.push(b'T');
            let count = u32::try_from(relations.len()).expect("a u32 count");
            out.extend(count.to_be_bytes());
            out.push(0);
            for relation in relations {
                out.extend(relation.to_be_bytes());
            }
        }
        Message::Other(kind) => out.push(*kind),
    }
    out
}

fn cstring(out: &mut Vec<u8>, text: &str) {
    assert!(!text.contains('\0'), "a parsed string holds a NUL");
    out.extend(text.as_bytes());
    out.push(0);
}

fn tuple(out: &mut Vec<u8>, tuple: &Tuple) {
    let count = u16::try_from(tuple.0.len()).expect("at most 65,535 columns");
    out.extend(count.to_be_bytes());
    for value in &tuple.0 {
        match value {
            Value::Null => out.push(b'n'),
            Value::Unchanged => out.push(b'u'),
            Value::Text(text) => {
                out.push(b't');
                let len = u32::try_from(text.len()).expect("a u32 length");
                out.extend(len.to_be_bytes());
                out.extend(text.as_bytes());
            }
        }
    }
}
