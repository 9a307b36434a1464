//! PROTOCOL.md's hex examples are exactly the bytes the encoder writes.
//!
//! Every ```` ```hex NAME ```` block in PROTOCOL.md is parsed (text after `#` is a comment) and
//! compared with the encoding of the example frame of the same name in
//! `clipsync::wire::examples`; the bytes are also decoded back to that frame. Every example has
//! a block, every block has an example, and every frame type has at least one.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;

use bytes::Bytes;
use clipsync::wire::{DecodeLimits, Frame, FrameType, examples};

const LIMITS: DecodeLimits = DecodeLimits {
    max_frame_size: 1 << 20,
};

/// The hex blocks of PROTOCOL.md, by name.
fn doc_examples() -> BTreeMap<String, Vec<u8>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md"))
        .expect("PROTOCOL.md is at the crate root");
    let mut out = BTreeMap::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("```hex ") else {
            continue;
        };
        let mut hex = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            let data = l.split('#').next().unwrap_or("");
            hex.extend(data.chars().filter(|c| !c.is_whitespace()));
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .unwrap_or_else(|e| panic!("block {name}: bad hex: {e}"));
        assert_eq!(hex.len() % 2, 0, "block {name}: odd number of hex digits");
        let prev = out.insert(name.trim().to_string(), bytes);
        assert!(prev.is_none(), "two hex blocks named {name}");
    }
    out
}

#[test]
fn every_hex_example_is_what_the_encoder_writes() {
    let doc = doc_examples();
    let code: BTreeMap<_, _> = examples::all().into_iter().collect();
    let doc_names: Vec<_> = doc.keys().cloned().collect();
    let code_names: Vec<_> = code.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        doc_names, code_names,
        "PROTOCOL.md blocks and examples differ"
    );
    for (name, frame) in &code {
        let encoded = frame.encode().expect("examples are valid");
        assert_eq!(
            encoded.as_ref(),
            doc[*name].as_slice(),
            "PROTOCOL.md block {name} differs from the encoder"
        );
        let decoded = Frame::decode(Bytes::from(doc[*name].clone()), LIMITS)
            .unwrap_or_else(|e| panic!("block {name} does not decode: {e}"));
        assert_eq!(&decoded, frame, "block {name} decodes to another frame");
    }
}

#[test]
fn every_frame_type_has_an_example() {
    let covered: Vec<FrameType> = examples::all()
        .iter()
        .map(|(_, f)| f.frame_type())
        .collect();
    for t in FrameType::ALL {
        assert!(covered.contains(&t), "no example of {t}");
    }
}

#[test]
fn the_type_table_lists_every_frame_type() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md"))
        .expect("PROTOCOL.md is at the crate root");
    for t in FrameType::ALL {
        let row = format!("| `0x{:02x}` | {} |", t.byte(), t.name());
        assert!(doc.contains(&row), "PROTOCOL.md §2 lacks the row {row}");
    }
}

#[test]
fn the_reason_table_lists_every_code() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md"))
        .expect("PROTOCOL.md is at the crate root");
    for r in clipsync::wire::ReasonCode::ALL {
        let row = format!("| {} | {} | {} |", r.code(), r.close_code(), r.name());
        assert!(doc.contains(&row), "PROTOCOL.md §7 lacks the row {row}");
    }
}

#[test]
fn snapshots_of_each_example() {
    for (name, frame) in examples::all() {
        let bytes = frame.encode().expect("examples are valid");
        let hex: Vec<String> = bytes
            .chunks(16)
            .map(|row| {
                row.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        insta::assert_snapshot!(name, hex.join("\n"));
    }
}
