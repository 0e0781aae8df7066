//! What pgjit's own logins let a server ask for. tokio-postgres answers whatever the server
//! asks: a server (or anyone in the middle, under an unverified ssl mode) that asks for
//! `AuthenticationCleartextPassword` or `AuthenticationMD5Password` would get the admin's
//! password, or a hash that replays. The guard reads the server's messages until it has
//! authenticated the client, and fails the connection on such a request before tokio-postgres
//! sees it, so nothing is sent.
//!
//! It sits twice: on the socket (where the server's first answer tells whether TLS follows; if
//! so the socket carries only ciphertext from then on and the guard stands aside) and on the
//! TLS stream (where the messages are read). SCRAM itself is tokio-postgres's: it uses
//! `SCRAM-SHA-256-PLUS` whenever the server offers it over TLS, and otherwise says it could
//! have bound the channel, so a server that supports binding refuses a downgrade.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// The password requests a login may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// A password is proven by SCRAM only: cleartext and MD5 requests fail the connection.
    ScramOnly,
    /// An RDS IAM auth token: RDS asks for it in clear, so cleartext is answered (only ever
    /// over `verify-full`, which the connector enforces); MD5 still fails.
    CleartextToken,
}

/// The protocol's `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// On the socket, before the client's first message: an SSLRequest or the startup.
    FirstWrite,
    /// The client asked for TLS: the server's next byte says yes (`S`) or no (`N`).
    SslAnswer,
    /// Reading the server's messages until authentication is over.
    Messages,
    /// Nothing more to check (authenticated, or TLS took over the socket).
    Aside,
}

/// The state of one connection's watch over what the server sends.
#[derive(Debug)]
struct Watch {
    answers: Answers,
    phase: Phase,
    /// The current message's type byte, length and first four body bytes, as they arrive.
    header: [u8; 9],
    have: usize,
    /// Body bytes of the current message still to pass over.
    skip: usize,
}

impl Watch {
    fn new(answers: Answers, phase: Phase) -> Watch {
        Watch { answers, phase, header: [0; 9], have: 0, skip: 0 }
    }

    fn wrote(&mut self, bytes: &[u8]) {
        if self.phase == Phase::FirstWrite {
            self.phase = if bytes.starts_with(&SSL_REQUEST) { Phase::SslAnswer } else { Phase::Messages };
        }
    }

    /// Looks at bytes the server sent; an error means the connection must end now.
    fn read(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.phase {
                Phase::Aside => return Ok(()),
                // The server spoke first: not PostgreSQL's order; let tokio-postgres say so.
                Phase::FirstWrite => self.phase = Phase::Messages,
                Phase::SslAnswer => {
                    self.phase = if bytes[0] == b'S' { Phase::Aside } else { Phase::Messages };
                    bytes = &bytes[1..];
                }
                Phase::Messages if self.skip > 0 => {
                    let n = self.skip.min(bytes.len());
                    self.skip -= n;
                    bytes = &bytes[n..];
                }
                Phase::Messages => {
                    let wanted = if self.have >= 1 && self.header[0] == b'R' { 9 } else { 5 };
                    let n = (wanted - self.have).min(bytes.len());
                    self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                    self.have += n;
                    bytes = &bytes[n..];
                    if self.have == 5 && self.header[0] == b'R' {
                        continue;
                    }
                    if self.have == wanted {
                        self.message()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A whole header is in: decides on an authentication request, then passes over the rest.
    fn message(&mut self) -> io::Result<()> {
        let length = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]) as usize;
        let body_seen = self.have - 5;
        self.have = 0;
        self.skip = length.saturating_sub(4 + body_seen);
        if self.header[0] != b'R' {
            return Ok(());
        }
        match u32::from_be_bytes([self.header[5], self.header[6], self.header[7], self.header[8]]) {
            0 => self.phase = Phase::Aside,
            3 if self.answers == Answers::CleartextToken => {}
            3 => return Err(refused("the password in clear text (AuthenticationCleartextPassword)")),
            5 => return Err(refused("an MD5 password hash (AuthenticationMD5Password)")),
            _ => {}
        }
        Ok(())
    }
}

fn refused(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "the server asked for {what}; pgjit proves a password with SCRAM-SHA-256 only and sent nothing: \
             use scram-sha-256 in pg_hba.conf and set the admin's password again under password_encryption = 'scram-sha-256' \
             (or this is not the server it claims to be)"
        ),
    )
}

/// A stream whose server side is watched (see the module's doc).
pub struct Guarded<S> {
    inner: S,
    watch: Watch,
}

impl<S> Guarded<S> {
    /// The socket: it may carry the SSLRequest first.
    pub fn socket(inner: S, answers: Answers) -> Guarded<S> {
        Guarded { inner, watch: Watch::new(answers, Phase::FirstWrite) }
    }

    /// The TLS stream: the startup and authentication run over it.
    fn tls(inner: S, answers: Answers) -> Guarded<S> {
        Guarded { inner, watch: Watch::new(answers, Phase::Messages) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => Poll::Ready(this.watch.read(&buf.filled()[before..])),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.watch.wrote(bytes);
        Pin::new(&mut this.inner).poll_write(cx, bytes)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Guarded<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A TLS connector whose streams are guarded.
pub struct GuardedTls<T> {
    inner: T,
    answers: Answers,
}

impl<T> GuardedTls<T> {
    pub fn new(inner: T, answers: Answers) -> GuardedTls<T> {
        GuardedTls { inner, answers }
    }
}

impl<S, T> TlsConnect<S> for GuardedTls<T>
where
    T: TlsConnect<S>,
    T::Future: Send + 'static,
    T::Stream: 'static,
{
    type Stream = Guarded<T::Stream>;
    type Error = T::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Guarded<T::Stream>, T::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let answers = self.answers;
        let connecting = self.inner.connect(stream);
        Box::pin(async move { connecting.await.map(|tls| Guarded::tls(tls, answers)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(code: u32) -> Vec<u8> {
        let mut m = vec![b'R', 0, 0, 0, 8];
        m.extend_from_slice(&code.to_be_bytes());
        m
    }

    fn sasl_offer() -> Vec<u8> {
        let mechanisms = b"SCRAM-SHA-256\0\0";
        let mut m = vec![b'R'];
        m.extend_from_slice(&((4 + 4 + mechanisms.len()) as u32).to_be_bytes());
        m.extend_from_slice(&10u32.to_be_bytes());
        m.extend_from_slice(mechanisms);
        m
    }

    /// Feeds the bytes in chunks of `size`; the first error, if any.
    fn feed(watch: &mut Watch, bytes: &[u8], size: usize) -> io::Result<()> {
        bytes.chunks(size).try_for_each(|chunk| watch.read(chunk))
    }

    #[test]
    fn cleartext_and_md5_requests_end_the_connection_however_the_bytes_arrive() {
        for size in [1, 2, 3, 5, 9, 64] {
            for (code, answers, refused) in [
                (3, Answers::ScramOnly, true),
                (5, Answers::ScramOnly, true),
                (3, Answers::CleartextToken, false),
                (5, Answers::CleartextToken, true),
            ] {
                // A notice first, then the request.
                let mut bytes = vec![b'N', 0, 0, 0, 6, b'x', 0];
                bytes.extend(auth(code));
                let mut watch = Watch::new(answers, Phase::Messages);
                assert_eq!(feed(&mut watch, &bytes, size).is_err(), refused, "code {code}, {answers:?}, chunks of {size}");
            }
            let mut watch = Watch::new(Answers::ScramOnly, Phase::Messages);
            let mut scram = sasl_offer();
            scram.extend(auth(0));
            scram.extend(auth(3)); // after AuthenticationOk nothing is read as a request
            assert!(feed(&mut watch, &scram, size).is_ok(), "SCRAM, chunks of {size}");
            assert_eq!(watch.phase, Phase::Aside);
        }
    }

    #[test]
    fn the_socket_stands_aside_once_tls_is_agreed() {
        let mut watch = Watch::new(Answers::ScramOnly, Phase::FirstWrite);
        watch.wrote(&SSL_REQUEST);
        assert!(watch.read(b"S\x16\x03\x03\x00\x05R\0\0\0\x08").is_ok(), "ciphertext is not read as messages");
        assert_eq!(watch.phase, Phase::Aside);
        let mut plain = Watch::new(Answers::ScramOnly, Phase::FirstWrite);
        plain.wrote(&SSL_REQUEST);
        let mut bytes = vec![b'N'];
        bytes.extend(auth(3));
        assert!(plain.read(&bytes).is_err(), "refused TLS, then asked for cleartext");
        let mut startup = Watch::new(Answers::ScramOnly, Phase::FirstWrite);
        startup.wrote(&[0, 0, 0, 40, 0, 3, 0, 0]);
        assert!(startup.read(&auth(5)).is_err());
    }
}
