//! The `post_auth` target: the relay between an authenticated client and a server, both
//! simulated by the input, without sockets; what goes either way must stay a well-formed
//! message stream.
//!
//! May import: [`super`] (the input), [`crate::client::relay`] and the state the session
//! lends it ([`crate::client::timing`], [`crate::prepared`]), [`crate::wire`].

use super::Input;
use crate::client::relay::{Relay, Statements, Stop, MAX_STREAMED, READ_HIGH, WRITE_HIGH};
use crate::client::timing::Timing;
use crate::prepared::{ClientStatements, ServerStatements};
use crate::wire::frame::{Header, HEADER_LEN};
use crate::wire::tag;
use bytes::BytesMut;

/// The relay's handling of an authenticated client's messages (and the answers of a server
/// that is simulated by the input), without sockets.
///
/// `data[0]`: bit 0 transaction mode, bit 1 prepared-statement rewriting, bit 2
/// pinned, bits 3-4 the server's statement cache size (1 to 4, so evictions happen), bit 5
/// prepares unnamed statements too;
/// `data[1]` the maximum message size. Then operations, each a kind byte:
/// kind % 6 = 0 raw client bytes (a length byte, then the bytes), 1 a client message (type
/// byte, length byte, body: the length field is computed), 2 raw server bytes, 3 a server
/// message (as 1), 4 the session writes everything out (buffers emptied), 5 a Parse with a
/// statement name byte (one of four names, or none) and query byte, so that names repeat.
///
/// After every step: no panic, the input left unread is only an incomplete message (or
/// nothing), and the buffers towards each side stay within the write threshold plus what one
/// step can add. What goes to either side must stay a well-formed message stream: whatever
/// the proxy adds (its own answers, rewritten or added messages) goes between messages, never
/// into the middle of one it is forwarding.
pub fn post_auth(data: &[u8]) {
    let mut input = Input(data);
    let mode = Mode::read(&mut input);
    let mut a = Attachment::new(mode.capacity);
    // An error either way ends the session.
    let mut done = false;
    let mut steps = 0;
    while !input.is_empty() && steps < 512 {
        steps += 1;
        let Some(side) = a.take(&mut input) else {
            continue; // the session wrote everything out
        };
        if done {
            break; // the session ends
        }
        done = match side {
            Side::Client => a.client_step(&mode),
            Side::Server => a.server_step(&mode),
        };
        a.check_bounds(mode.max);
    }
    a.server_framing.feed(&a.to_server);
    a.client_framing.feed(&a.to_client);
}

/// What the first two bytes of an input pick: the pool mode and statement handling, the
/// server's statement cache size, the maximum message size.
struct Mode {
    rewrite: bool,
    unnamed: bool,
    pinned: bool,
    capacity: usize,
    max: usize,
}

impl Mode {
    fn read(input: &mut Input<'_>) -> Mode {
        let flags = input.u8();
        let transaction = flags & 1 != 0;
        let rewrite = transaction && flags & 2 != 0;
        let unnamed = rewrite && flags & 32 != 0;
        let pinned = flags & 4 != 0;
        let capacity = usize::from(flags >> 3 & 3) + 1;
        let max = match input.u8() {
            0 => 1 << 20,
            m => HEADER_LEN + usize::from(m) * 4,
        };
        Mode { rewrite, unnamed, pinned, capacity, max }
    }
}

/// Which side an operation gave bytes to.
enum Side {
    Client,
    Server,
}

/// What the session lends the relay.
struct Lent {
    timing: Timing,
    client: ClientStatements,
    server: ServerStatements,
}

impl Lent {
    fn statements(&mut self, mode: &Mode) -> Statements<'_> {
        Statements {
            timing: &mut self.timing,
            client: &mut self.client,
            server: &mut self.server,
            rewrite: mode.rewrite,
            unnamed: mode.unnamed,
            pinned: mode.pinned,
        }
    }
}

/// A relay with its input and output on either side, and the framing checks of what it
/// sends.
struct Attachment {
    relay: Relay,
    lent: Lent,
    c_in: BytesMut,
    s_in: BytesMut,
    to_server: BytesMut,
    to_client: BytesMut,
    server_framing: Framing,
    client_framing: Framing,
}

impl Attachment {
    fn new(capacity: usize) -> Attachment {
        Attachment {
            relay: Relay::new(),
            lent: Lent {
                timing: Timing::default(),
                client: ClientStatements::default(),
                server: ServerStatements::new(capacity),
            },
            c_in: BytesMut::new(),
            s_in: BytesMut::new(),
            to_server: BytesMut::new(),
            to_client: BytesMut::new(),
            server_framing: Framing::new(true),
            client_framing: Framing::new(false),
        }
    }

    /// Reads one operation off the input and does it: bytes from one side (which is
    /// returned), or the session writing everything out (`None`).
    fn take(&mut self, input: &mut Input<'_>) -> Option<Side> {
        let kind = input.u8();
        match kind % 6 {
            0 => {
                let n = usize::from(input.u8());
                self.c_in.extend_from_slice(input.take(n));
                Some(Side::Client)
            }
            1 => {
                self.c_in.extend_from_slice(&message(input));
                Some(Side::Client)
            }
            2 => {
                let n = usize::from(input.u8());
                self.s_in.extend_from_slice(input.take(n));
                Some(Side::Server)
            }
            3 => {
                self.s_in.extend_from_slice(&message(input));
                Some(Side::Server)
            }
            4 => {
                self.server_framing.feed(&self.to_server.split());
                self.client_framing.feed(&self.to_client.split());
                None
            }
            _ => {
                self.c_in.extend_from_slice(&parse(input));
                Some(Side::Client)
            }
        }
    }

    /// The relay moves the client's bytes; true when it fails (the session ends).
    fn client_step(&mut self, mode: &Mode) -> bool {
        let mut st = self.lent.statements(mode);
        let relay = &mut self.relay;
        match relay.client_to_server(
            &mut self.c_in,
            &mut self.to_server,
            &mut self.to_client,
            mode.max,
            &mut st,
        ) {
            Ok(stop) => {
                self.check_client_stop(stop, mode.max);
                false
            }
            Err(_) => true,
        }
    }

    /// Progress: it stops on its output only when that is full; otherwise, unless the client
    /// said goodbye or waits for the server (answers owed at their cap, a statement being
    /// described), what is left is an incomplete message, and the session may read more of it.
    fn check_client_stop(&self, stop: Stop, max: usize) {
        let relay = &self.relay;
        match stop {
            Stop::Output => {
                assert!(self.to_server.len() >= WRITE_HIGH, "stopped on an output with room")
            }
            Stop::Rest => panic!("only the server's answers bring the relay to rest"),
            Stop::Input => {
                if !relay.terminated && !relay.blocked() {
                    if let Ok(Some(h)) = Header::parse(&self.c_in, max) {
                        assert!(self.c_in.len() < h.total_len(), "a whole message left unread");
                        assert!(
                            self.c_in.len() < relay.client_read_limit(),
                            "a message that cannot be read whole"
                        );
                    }
                }
            }
        }
        assert!(relay.client_read_limit() <= READ_HIGH.max(max));
    }

    /// The relay moves the server's bytes; true when it fails (the session ends).
    fn server_step(&mut self, mode: &Mode) -> bool {
        let mut st = self.lent.statements(mode);
        let relay = &mut self.relay;
        match relay.server_to_client(&mut self.s_in, &mut self.to_client, mode.max, &mut st) {
            Ok(Stop::Output) => assert!(self.to_client.len() >= WRITE_HIGH, "stopped on an output with room"),
            Ok(Stop::Rest) => assert!(relay.at_rest()),
            Ok(Stop::Input) => {
                // Whatever is left needs more bytes before anything of it can move.
                if let Ok(Some(h)) = Header::parse(&self.s_in, MAX_STREAMED) {
                    assert!(self.s_in.len() < h.total_len(), "a whole server message left unread");
                    assert!(
                        self.s_in.len() < relay.server_read_limit(),
                        "a message that cannot be read whole"
                    );
                }
            }
            Err(_) => return true,
        }
        false
    }

    /// One step adds at most one message (up to `max`) and what the proxy writes on its own
    /// for it: rewritten names, a Parse for a statement the server lacks, Closes of evicted
    /// statements, answers it owes.
    fn check_bounds(&self, max: usize) {
        let bound = WRITE_HIGH + 2 * max + 64 * 1024;
        assert!(self.to_server.len() <= bound, "{} bytes towards the server", self.to_server.len());
        assert!(
            self.to_client.len() <= bound + WRITE_HIGH,
            "{} bytes towards the client",
            self.to_client.len()
        );
        let relay = &self.relay;
        let _ = (relay.at_rest(), relay.quiet(), relay.server_read_limit());
    }
}

/// A message from the input: a type byte, a length byte and that much body (the length
/// field is computed).
fn message(input: &mut Input<'_>) -> Vec<u8> {
    let t = input.u8();
    let n = usize::from(input.u8());
    let body = input.take(n);
    let mut m = vec![t];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A Parse from the input: a statement name byte (one of four names, or the unnamed
/// statement) and a query byte, so that names and texts repeat.
fn parse(input: &mut Input<'_>) -> Vec<u8> {
    let (name, query) = (input.u8() % 5, input.u8() % 4);
    // Name 4 is the unnamed statement.
    let mut body = if name == 4 { vec![0] } else { vec![b's', b'0' + name, 0] };
    body.extend_from_slice(format!("select {query}").as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    let mut m = vec![tag::PARSE];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(&body);
    m
}

/// Follows a byte stream message by message without keeping it: every header must be valid
/// (and, towards the server, name a frontend message other than Terminate).
struct Framing {
    towards_server: bool,
    head: Vec<u8>,
    skip: usize,
}

impl Framing {
    fn new(towards_server: bool) -> Framing {
        Framing { towards_server, head: Vec::new(), skip: 0 }
    }

    fn feed(&mut self, mut data: &[u8]) {
        loop {
            let n = self.skip.min(data.len());
            self.skip -= n;
            data = &data[n..];
            if data.is_empty() {
                return;
            }
            let n = (HEADER_LEN - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.head.len() < HEADER_LEN {
                return;
            }
            let h = match Header::parse(&self.head, MAX_STREAMED) {
                Ok(Some(h)) => h,
                other => panic!("{} stream out of step: header {:?} ({other:?})", self.side(), self.head),
            };
            if self.towards_server {
                assert!(
                    crate::wire::is_frontend_tag(h.tag) && h.tag != tag::TERMINATE,
                    "message type {:?} sent to the server",
                    h.tag as char
                );
            }
            self.head.clear();
            self.skip = h.body_len;
        }
    }

    fn side(&self) -> &'static str {
        if self.towards_server {
            "server-bound"
        } else {
            "client-bound"
        }
    }
}
