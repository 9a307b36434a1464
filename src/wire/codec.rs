//! Encoding and decoding of the frames of [`super::frame`] (PROTOCOL.md §2–§6).

use bytes::{BufMut, Bytes, BytesMut};

use super::ReasonCode;
use super::error::{DecodeError, EncodeError};
use super::frame::*;

impl Frame {
    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::Hello(_) => FrameType::Hello,
            Self::Auth(_) => FrameType::Auth,
            Self::AuthResult(_) => FrameType::AuthResult,
            Self::Resume(_) => FrameType::Resume,
            Self::Resumed(_) => FrameType::Resumed,
            Self::SessionLost(_) => FrameType::SessionLost,
            Self::Message(_) => FrameType::Message,
            Self::StreamOpen(_) => FrameType::StreamOpen,
            Self::StreamChunk(_) => FrameType::StreamChunk,
            Self::StreamEnd(_) => FrameType::StreamEnd,
            Self::StreamAbort(_) => FrameType::StreamAbort,
            Self::StreamResult(_) => FrameType::StreamResult,
            Self::Ack(_) => FrameType::Ack,
            Self::Credit(_) => FrameType::Credit,
            Self::Ping(_) => FrameType::Ping,
            Self::Pong(_) => FrameType::Pong,
            Self::GoAway(_) => FrameType::GoAway,
        }
    }

    fn flags(&self) -> u16 {
        match self {
            Self::Message(m) if !m.metadata.is_empty() => FLAG_METADATA,
            Self::StreamOpen(o) => {
                let mut f = 0;
                if o.total_len.is_some() {
                    f |= FLAG_LENGTH_KNOWN;
                }
                if o.hash.is_some() {
                    f |= FLAG_HASH_KNOWN;
                }
                if !o.metadata.is_empty() {
                    f |= FLAG_METADATA;
                }
                if o.offer {
                    f |= FLAG_OFFER;
                }
                f
            }
            _ => 0,
        }
    }

    /// Encodes the frame as one WebSocket message body.
    ///
    /// Fails, without writing anything, on a field the decoder would refuse (a content type
    /// that is empty, too long or not printable ASCII, a text over [`MAX_TEXT_LEN`], stream
    /// id 0, …), so the encoder never emits what a peer must reject.
    pub fn encode(&self) -> Result<Bytes, EncodeError> {
        self.encode_into(&mut BytesMut::new())
    }

    /// Like [`Frame::encode`], but builds the frame in `buf`'s spare capacity. A caller that
    /// keeps `buf` gets its allocation back once the returned `Bytes` is dropped (`BytesMut`
    /// reclaims a buffer nobody else holds), so a stream of chunks reuses one buffer instead
    /// of allocating one per frame.
    pub fn encode_into(&self, buf: &mut BytesMut) -> Result<Bytes, EncodeError> {
        self.check()?;
        // One buffer, one copy of any payload: the header's length is patched in after.
        buf.clear();
        buf.reserve(HEADER_LEN + 64 + self.payload_len());
        let out = buf;
        out.put_u8(PROTOCOL_VERSION);
        out.put_u8(self.frame_type().byte());
        out.put_u16(self.flags());
        out.put_u32(0);
        self.put_body(out);
        let len = u32::try_from(out.len() - HEADER_LEN).map_err(|_| EncodeError::InvalidField {
            frame: self.frame_type(),
            field: "length",
            reason: "body longer than 4 GiB",
        })?;
        out[4..8].copy_from_slice(&len.to_be_bytes());
        Ok(out.split().freeze())
    }

    /// Bytes of the variable-length payload (for sizing the buffer once).
    fn payload_len(&self) -> usize {
        match self {
            Self::Message(m) => m.payload.len() + m.content_type.len() + m.metadata.len(),
            Self::StreamChunk(c) => c.data.len(),
            Self::Hello(h) => {
                h.public_key.len() + h.extensions.iter().map(|e| e.data.len() + 4).sum::<usize>()
            }
            Self::Auth(a) => a.signature.len(),
            _ => 1024,
        }
    }

    /// Validates every field against the rules the decoder applies.
    fn check(&self) -> Result<(), EncodeError> {
        let ft = self.frame_type();
        let bad = |field, reason| {
            Err(EncodeError::InvalidField {
                frame: ft,
                field,
                reason,
            })
        };
        let text_ok = |t: &str| t.len() <= MAX_TEXT_LEN;
        match self {
            Self::Hello(h) => {
                if h.public_key.len() > MAX_KEY_LEN {
                    return bad("public_key", "longer than 4096 bytes");
                }
                if h.extensions.len() > MAX_EXTENSIONS {
                    return bad("extensions", "more than 8");
                }
                if h.extensions
                    .iter()
                    .any(|e| e.data.len() > MAX_EXTENSION_LEN)
                {
                    return bad("extension.data", "longer than 1024 bytes");
                }
            }
            Self::Auth(a) if a.signature.len() > MAX_SIGNATURE_LEN => {
                return bad("signature", "longer than 8192 bytes");
            }
            Self::AuthResult(AuthResult { text, .. })
            | Self::StreamAbort(StreamAbort { text, .. })
            | Self::StreamResult(StreamResult { text, .. })
            | Self::GoAway(GoAway { text, .. })
                if !text_ok(text) =>
            {
                return bad("text", "longer than 1024 bytes");
            }
            Self::Resumed(r) if r.session.is_none() => return bad("session", "is zero"),
            Self::SessionLost(s) if s.new_session.is_none() => {
                return bad("new_session", "is zero");
            }
            Self::Message(m) => {
                if m.seq == 0 {
                    return bad("seq", "is zero");
                }
                if let Some(reason) = content_type_problem(m.content_type.as_bytes()) {
                    return bad("content_type", reason);
                }
                if m.metadata.len() > MAX_METADATA_LEN {
                    return bad("metadata", "longer than 1024 bytes");
                }
            }
            Self::StreamOpen(o) => {
                if o.seq == 0 {
                    return bad("seq", "is zero");
                }
                if o.stream_id == 0 {
                    return bad("stream_id", "is zero");
                }
                if let Some(reason) = content_type_problem(o.content_type.as_bytes()) {
                    return bad("content_type", reason);
                }
                if o.metadata.len() > MAX_METADATA_LEN {
                    return bad("metadata", "longer than 1024 bytes");
                }
            }
            Self::StreamChunk(c) => {
                if c.stream_id == 0 {
                    return bad("stream_id", "is zero");
                }
                if c.data.is_empty() {
                    return bad("data", "is empty");
                }
                if c.offset.checked_add(c.data.len() as u64).is_none() {
                    return bad("offset", "offset + length overflows");
                }
            }
            Self::StreamEnd(StreamEnd { stream_id: 0, .. })
            | Self::StreamAbort(StreamAbort { stream_id: 0, .. })
            | Self::StreamResult(StreamResult { stream_id: 0, .. }) => {
                return bad("stream_id", "is zero");
            }
            Self::StreamResult(StreamResult { seq: 0, .. }) => return bad("seq", "is zero"),
            Self::StreamAbort(StreamAbort {
                reason: ReasonCode::Normal,
                ..
            }) => return bad("reason", "0 (normal) is not a reason to abort"),
            Self::Credit(c) if c.acked > c.limit => return bad("acked", "greater than limit"),
            _ => {}
        }
        Ok(())
    }

    fn put_body(&self, b: &mut BytesMut) {
        match self {
            Self::Hello(h) => {
                b.put_u8(h.protocol_version);
                b.put_u8(h.role.byte());
                b.put_slice(&h.nonce);
                b.put_u32(h.capabilities);
                let l = &h.limits;
                b.put_u32(l.max_frame_size);
                b.put_u32(l.max_message_size);
                b.put_u32(l.stream_window);
                b.put_u32(l.connection_window);
                b.put_u16(l.max_streams);
                b.put_u32(l.heartbeat_interval_ms);
                b.put_u32(l.idle_timeout_ms);
                put_u16_bytes(b, &h.public_key);
                // Checked: at most MAX_EXTENSIONS (8).
                b.put_u8(h.extensions.len() as u8);
                for e in &h.extensions {
                    b.put_u16(e.kind);
                    put_u16_bytes(b, &e.data);
                }
            }
            Self::Auth(a) => put_u16_bytes(b, &a.signature),
            Self::AuthResult(r) => {
                b.put_u16(r.reason.code());
                put_u16_bytes(b, r.text.as_bytes());
            }
            Self::Resume(r) => {
                b.put_slice(&r.session.0);
                b.put_u64(r.last_received);
            }
            Self::Resumed(r) => {
                b.put_slice(&r.session.0);
                b.put_u64(r.last_received);
            }
            Self::SessionLost(s) => {
                b.put_slice(&s.old_session.0);
                b.put_slice(&s.new_session.0);
                b.put_u16(s.reason.code());
            }
            Self::Message(m) => {
                b.put_u64(m.seq);
                put_u8_bytes(b, m.content_type.as_bytes());
                if !m.metadata.is_empty() {
                    put_u16_bytes(b, &m.metadata);
                }
                b.put_slice(&m.payload);
            }
            Self::StreamOpen(o) => {
                b.put_u64(o.seq);
                b.put_u64(o.stream_id);
                b.put_u64(o.total_len.unwrap_or(0));
                b.put_slice(&o.hash.unwrap_or([0; 32]));
                put_u8_bytes(b, o.content_type.as_bytes());
                if !o.metadata.is_empty() {
                    put_u16_bytes(b, &o.metadata);
                }
            }
            Self::StreamChunk(c) => {
                b.put_u64(c.stream_id);
                b.put_u64(c.offset);
                b.put_slice(&c.data);
            }
            Self::StreamEnd(e) => {
                b.put_u64(e.stream_id);
                b.put_u64(e.total_len);
                b.put_slice(&e.hash);
            }
            Self::StreamAbort(a) => {
                b.put_u64(a.stream_id);
                b.put_u16(a.reason.code());
                put_u16_bytes(b, a.text.as_bytes());
            }
            Self::StreamResult(r) => {
                b.put_u64(r.seq);
                b.put_u64(r.stream_id);
                b.put_u16(r.reason.code());
                put_u16_bytes(b, r.text.as_bytes());
            }
            Self::Ack(a) => b.put_u64(a.last_seq),
            Self::Credit(c) => {
                b.put_u64(c.stream_id);
                b.put_u64(c.acked);
                b.put_u64(c.limit);
            }
            Self::Ping(p) => b.put_u64(p.timestamp_us),
            Self::Pong(p) => b.put_u64(p.timestamp_us),
            Self::GoAway(g) => {
                b.put_u16(g.reason.code());
                b.put_u64(g.last_seq);
                put_u16_bytes(b, g.text.as_bytes());
            }
        }
    }

    /// Decodes one whole WebSocket message as one frame.
    ///
    /// Checks the size against `limits` before reading anything, then the header, then every
    /// field; payloads are zero-copy slices of `msg`. Never panics; allocates only bounded
    /// small fields (content types, texts, at most 8 extension headers).
    pub fn decode(msg: Bytes, limits: DecodeLimits) -> Result<Frame, DecodeError> {
        if msg.len() > limits.max_frame_size {
            return Err(DecodeError::FrameTooLarge {
                len: msg.len(),
                max: limits.max_frame_size,
            });
        }
        if msg.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                frame: "header",
                field: "header",
            });
        }
        let version = msg[0];
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion { version });
        }
        let type_byte = msg[1];
        let flags = u16::from_be_bytes([msg[2], msg[3]]);
        let declared = u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]);
        let actual = msg.len() - HEADER_LEN;
        if declared as usize != actual {
            return Err(DecodeError::LengthMismatch { declared, actual });
        }
        let Some(ft) = FrameType::from_byte(type_byte) else {
            return Err(DecodeError::UnknownType {
                frame_type: type_byte,
                ignorable: flags & FLAG_IGNORABLE != 0,
            });
        };
        // IGNORABLE is valid on every type (PROTOCOL.md §2); on a known type it changes nothing.
        if flags & !(ft.allowed_flags() | FLAG_IGNORABLE) != 0 {
            return Err(DecodeError::InvalidFlags { frame: ft, flags });
        }
        let mut r = Reader {
            buf: msg.slice(HEADER_LEN..),
            frame: ft,
        };
        let frame = r.body(flags)?;
        if !r.buf.is_empty() {
            return Err(DecodeError::TrailingBytes {
                frame: ft,
                extra: r.buf.len(),
            });
        }
        Ok(frame)
    }
}

/// Why a content type is refused, if it is (1–255 printable ASCII bytes, PROTOCOL.md §5.1).
pub fn content_type_problem(ct: &[u8]) -> Option<&'static str> {
    if ct.is_empty() {
        Some("is empty")
    } else if ct.len() > MAX_CONTENT_TYPE_LEN {
        Some("longer than 255 bytes")
    } else if !ct.iter().all(|c| (0x20..=0x7e).contains(c)) {
        Some("not printable ASCII")
    } else {
        None
    }
}

fn put_u16_bytes(b: &mut BytesMut, data: &[u8]) {
    // Callers checked the length against a cap below u16::MAX.
    b.put_u16(data.len() as u16);
    b.put_slice(data);
}

fn put_u8_bytes(b: &mut BytesMut, data: &[u8]) {
    // Callers checked the length against MAX_CONTENT_TYPE_LEN.
    b.put_u8(data.len() as u8);
    b.put_slice(data);
}

/// A cursor over a frame body that refuses to read past the end.
struct Reader {
    buf: Bytes,
    frame: FrameType,
}

impl Reader {
    fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                frame: self.frame.name(),
                field,
            });
        }
        Ok(self.buf.split_to(n))
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let b = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&b);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    fn invalid(&self, field: &'static str, reason: &'static str) -> DecodeError {
        DecodeError::InvalidField {
            frame: self.frame,
            field,
            reason,
        }
    }

    /// A u16-length-prefixed byte string of at most `max` bytes.
    fn bytes16(&mut self, field: &'static str, max: usize) -> Result<Bytes, DecodeError> {
        let n = usize::from(self.u16(field)?);
        if n > max {
            return Err(self.invalid(field, "longer than its limit"));
        }
        self.take(n, field)
    }

    /// The `metadata` field, present when flag `METADATA` is set (empty otherwise).
    fn metadata(&mut self, flags: u16) -> Result<Bytes, DecodeError> {
        if flags & FLAG_METADATA == 0 {
            return Ok(Bytes::new());
        }
        self.bytes16("metadata", MAX_METADATA_LEN)
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes16("text", MAX_TEXT_LEN)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.invalid("text", "not UTF-8"))
    }

    fn content_type(&mut self) -> Result<String, DecodeError> {
        let n = usize::from(self.u8("content_type")?);
        let b = self.take(n, "content_type")?;
        if let Some(reason) = content_type_problem(&b) {
            return Err(self.invalid("content_type", reason));
        }
        // Printable ASCII is UTF-8.
        Ok(b.iter().map(|&c| char::from(c)).collect())
    }

    fn session(&mut self, field: &'static str) -> Result<SessionId, DecodeError> {
        Ok(SessionId(self.array(field)?))
    }

    fn nonzero(&self, v: u64, field: &'static str) -> Result<u64, DecodeError> {
        if v == 0 {
            Err(self.invalid(field, "is zero"))
        } else {
            Ok(v)
        }
    }

    fn stream_id(&mut self) -> Result<u64, DecodeError> {
        let v = self.u64("stream_id")?;
        self.nonzero(v, "stream_id")
    }

    fn reason(&mut self) -> Result<ReasonCode, DecodeError> {
        Ok(ReasonCode::from_code(self.u16("reason")?))
    }

    fn body(&mut self, flags: u16) -> Result<Frame, DecodeError> {
        Ok(match self.frame {
            FrameType::Hello => {
                let protocol_version = self.u8("protocol_version")?;
                let role = match self.u8("role")? {
                    0 => Role::Dialer,
                    1 => Role::Listener,
                    _ => return Err(self.invalid("role", "not 0 or 1")),
                };
                let nonce = self.array("nonce")?;
                let capabilities = self.u32("capabilities")?;
                let limits = PeerLimits {
                    max_frame_size: self.u32("max_frame_size")?,
                    max_message_size: self.u32("max_message_size")?,
                    stream_window: self.u32("stream_window")?,
                    connection_window: self.u32("connection_window")?,
                    max_streams: self.u16("max_streams")?,
                    heartbeat_interval_ms: self.u32("heartbeat_interval_ms")?,
                    idle_timeout_ms: self.u32("idle_timeout_ms")?,
                };
                let public_key = self.bytes16("public_key", MAX_KEY_LEN)?;
                let count = usize::from(self.u8("extension_count")?);
                if count > MAX_EXTENSIONS {
                    return Err(self.invalid("extension_count", "more than 8"));
                }
                let mut extensions = Vec::with_capacity(count);
                for _ in 0..count {
                    let kind = self.u16("extension.kind")?;
                    let data = self.bytes16("extension.data", MAX_EXTENSION_LEN)?;
                    extensions.push(Extension { kind, data });
                }
                Frame::Hello(Hello {
                    protocol_version,
                    role,
                    nonce,
                    capabilities,
                    limits,
                    public_key,
                    extensions,
                })
            }
            FrameType::Auth => Frame::Auth(Auth {
                signature: self.bytes16("signature", MAX_SIGNATURE_LEN)?,
            }),
            FrameType::AuthResult => Frame::AuthResult(AuthResult {
                reason: self.reason()?,
                text: self.text()?,
            }),
            FrameType::Resume => Frame::Resume(Resume {
                session: self.session("session")?,
                last_received: self.u64("last_received")?,
            }),
            FrameType::Resumed => {
                let session = self.session("session")?;
                if session.is_none() {
                    return Err(self.invalid("session", "is zero"));
                }
                Frame::Resumed(Resumed {
                    session,
                    last_received: self.u64("last_received")?,
                })
            }
            FrameType::SessionLost => {
                let old_session = self.session("old_session")?;
                let new_session = self.session("new_session")?;
                if new_session.is_none() {
                    return Err(self.invalid("new_session", "is zero"));
                }
                Frame::SessionLost(SessionLost {
                    old_session,
                    new_session,
                    reason: self.reason()?,
                })
            }
            FrameType::Message => {
                let seq = self.u64("seq")?;
                let seq = self.nonzero(seq, "seq")?;
                let content_type = self.content_type()?;
                let metadata = self.metadata(flags)?;
                Frame::Message(MessageFrame {
                    seq,
                    content_type,
                    metadata,
                    payload: self.rest(),
                })
            }
            FrameType::StreamOpen => {
                let seq = self.u64("seq")?;
                let seq = self.nonzero(seq, "seq")?;
                let stream_id = self.stream_id()?;
                let len = self.u64("total_len")?;
                let hash: [u8; 32] = self.array("hash")?;
                let total_len = if flags & FLAG_LENGTH_KNOWN != 0 {
                    Some(len)
                } else if len != 0 {
                    return Err(self.invalid("total_len", "non-zero without LENGTH_KNOWN"));
                } else {
                    None
                };
                let hash = if flags & FLAG_HASH_KNOWN != 0 {
                    Some(hash)
                } else if hash != [0; 32] {
                    return Err(self.invalid("hash", "non-zero without HASH_KNOWN"));
                } else {
                    None
                };
                let content_type = self.content_type()?;
                Frame::StreamOpen(StreamOpen {
                    seq,
                    stream_id,
                    total_len,
                    hash,
                    offer: flags & FLAG_OFFER != 0,
                    content_type,
                    metadata: self.metadata(flags)?,
                })
            }
            FrameType::StreamChunk => {
                let stream_id = self.stream_id()?;
                let offset = self.u64("offset")?;
                let data = self.rest();
                if data.is_empty() {
                    return Err(self.invalid("data", "is empty"));
                }
                if offset.checked_add(data.len() as u64).is_none() {
                    return Err(self.invalid("offset", "offset + length overflows"));
                }
                Frame::StreamChunk(StreamChunk {
                    stream_id,
                    offset,
                    data,
                })
            }
            FrameType::StreamEnd => Frame::StreamEnd(StreamEnd {
                stream_id: self.stream_id()?,
                total_len: self.u64("total_len")?,
                hash: self.array("hash")?,
            }),
            FrameType::StreamAbort => {
                let stream_id = self.stream_id()?;
                let reason = self.reason()?;
                if reason == ReasonCode::Normal {
                    return Err(self.invalid("reason", "0 (normal) is not a reason to abort"));
                }
                Frame::StreamAbort(StreamAbort {
                    stream_id,
                    reason,
                    text: self.text()?,
                })
            }
            FrameType::StreamResult => {
                let seq = self.u64("seq")?;
                let seq = self.nonzero(seq, "seq")?;
                Frame::StreamResult(StreamResult {
                    seq,
                    stream_id: self.stream_id()?,
                    reason: self.reason()?,
                    text: self.text()?,
                })
            }
            FrameType::Ack => Frame::Ack(Ack {
                last_seq: self.u64("last_seq")?,
            }),
            FrameType::Credit => {
                let stream_id = self.u64("stream_id")?;
                let acked = self.u64("acked")?;
                let limit = self.u64("limit")?;
                if acked > limit {
                    return Err(self.invalid("acked", "greater than limit"));
                }
                Frame::Credit(Credit {
                    stream_id,
                    acked,
                    limit,
                })
            }
            FrameType::Ping => Frame::Ping(Ping {
                timestamp_us: self.u64("timestamp_us")?,
            }),
            FrameType::Pong => Frame::Pong(Pong {
                timestamp_us: self.u64("timestamp_us")?,
            }),
            FrameType::GoAway => Frame::GoAway(GoAway {
                reason: self.reason()?,
                last_seq: self.u64("last_seq")?,
                text: self.text()?,
            }),
        })
    }
}
