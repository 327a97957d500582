//! `vessel vm log` and `vessel vm console`: moving console bytes between the daemon and the
//! user's terminal.

use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::RawFd;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// The byte Ctrl-] sends; it detaches from an interactive console.
pub const DETACH_BYTE: u8 = 0x1d;

const STDIN: RawFd = libc::STDIN_FILENO;

/// After standard input ends, console output is still copied until it has been quiet this
/// long (or the daemon closes the console), so that `printf 'cmd\n' | vessel vm console NAME`
/// shows the answer to `cmd`.
pub const DRAIN_QUIET: std::time::Duration = std::time::Duration::from_secs(1);

/// How a console session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleEnd {
    /// The user typed Ctrl-].
    Detached,
    /// The daemon closed the console (the VM stopped, or the daemon went away).
    RemoteClosed,
    /// Our standard input ended and the console went quiet after it.
    InputClosed,
    /// A signal (its number) asked us to stop.
    Signal(i32),
}

/// Copies a streamed log body to stdout as it arrives, until it ends or Ctrl-C.
/// Streams a console log body to stdout. A reader that goes away (`vessel vm log X | head`) is a
/// normal end, not an error.
pub async fn stream_log(body: Incoming) -> io::Result<()> {
    match copy_log(body).await {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

async fn copy_log(mut body: Incoming) -> io::Result<()> {
    let mut stdout = tokio::io::stdout();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            frame = body.frame() => match frame {
                None => break,
                Some(Err(err)) => return Err(io::Error::other(err)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        stdout.write_all(&data).await?;
                        stdout.flush().await?;
                    }
                }
            },
            _ = &mut ctrl_c => break,
        }
    }
    stdout.flush().await
}

/// Whether standard input is a terminal.
pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor; any value is safe to pass.
    unsafe { libc::isatty(STDIN) == 1 }
}

/// The terminal in raw mode; dropping it restores the settings it found, on every exit path
/// (return, error, panic unwinding).
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts the terminal on `fd` in raw mode: no echo, no line editing, no signals from
    /// Ctrl-C/Ctrl-Z (those keys go to the VM), no output processing.
    pub fn enter(fd: RawFd) -> io::Result<RawMode> {
        let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr writes a termios into the valid pointer we pass, or fails.
        if unsafe { libc::tcgetattr(fd, saved.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: tcgetattr succeeded, so it initialized the struct.
        let saved = unsafe { saved.assume_init() };
        let mut raw = saved;
        // SAFETY: cfmakeraw only modifies the struct we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios derived from the terminal's own settings.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings tcgetattr returned for this same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSADRAIN, &self.saved) };
    }
}

/// Reads stdin on a plain thread and hands the chunks to the async side. A thread, not
/// `tokio::io::stdin`, because a blocking read cannot be cancelled and would keep the runtime
/// from shutting down after a detach; a detached thread simply ends with the process.
fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::Builder::new()
        .name("console-stdin".into())
        .spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buf = [0u8; 4096];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        })
        .expect("spawning the stdin reader thread");
    rx
}

/// Attaches the user's terminal to a console stream until detach, EOF on either side, or a
/// terminating signal. With a TTY on stdin the terminal is put in raw mode and Ctrl-]
/// detaches; otherwise bytes are copied unchanged.
pub async fn attach<S>(stream: S, vm: &str) -> io::Result<ConsoleEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tty = stdin_is_tty();
    let mut signals = Signals::new()?;
    if tty {
        eprintln!("Connected to {vm}'s console; press Ctrl-] to detach");
    } else {
        eprintln!("Connected to {vm}'s console");
    }
    let input = spawn_stdin_reader();
    let raw = if tty {
        Some(RawMode::enter(STDIN)?)
    } else {
        None
    };
    let mut stdout = tokio::io::stdout();
    let end = pump(stream, input, &mut stdout, tty, signals.any()).await;
    drop(raw);
    let end = end?;
    if tty {
        let message = match end {
            ConsoleEnd::Detached => format!("Detached from {vm}'s console."),
            ConsoleEnd::RemoteClosed => format!("{vm}'s console was closed by the daemon."),
            ConsoleEnd::InputClosed | ConsoleEnd::Signal(_) => {
                format!("Left {vm}'s console.")
            }
        };
        let _ = writeln!(io::stderr(), "\n{message}");
    }
    Ok(end)
}

/// The signals that end a console session. In raw mode the terminal sends none of them, but
/// other processes may, and the terminal must be restored before we go.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// Waits for any of them and returns its number.
    async fn any(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
            _ = self.int.recv() => libc::SIGINT,
            _ = self.quit.recv() => libc::SIGQUIT,
        }
    }
}

/// The copy loop, separate from terminal handling so that it can be tested with in-memory
/// streams.
async fn pump<S, W>(
    stream: S,
    mut input: mpsc::Receiver<Vec<u8>>,
    output: &mut W,
    detach_on_ctrl_bracket: bool,
    stop: impl Future<Output = i32>,
) -> io::Result<ConsoleEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
    W: AsyncWrite + Unpin,
{
    tokio::pin!(stop);
    let (mut from_vm, mut to_vm) = tokio::io::split(stream);
    let mut buf = vec![0u8; 8192];
    let mut input_closed = false;
    let quiet = tokio::time::sleep(DRAIN_QUIET);
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            chunk = input.recv(), if !input_closed => {
                let Some(chunk) = chunk else {
                    // Tell the daemon no more input comes, then let the VM's answer to what
                    // was sent reach the output before leaving.
                    input_closed = true;
                    to_vm.shutdown().await?;
                    quiet.as_mut().reset(tokio::time::Instant::now() + DRAIN_QUIET);
                    continue;
                };
                let (send, detach) = split_at_detach(&chunk, detach_on_ctrl_bracket);
                if !send.is_empty() {
                    to_vm.write_all(send).await?;
                    to_vm.flush().await?;
                }
                if detach {
                    return Ok(ConsoleEnd::Detached);
                }
            }
            read = from_vm.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    return Ok(ConsoleEnd::RemoteClosed);
                }
                output.write_all(&buf[..n]).await?;
                output.flush().await?;
                if input_closed {
                    quiet.as_mut().reset(tokio::time::Instant::now() + DRAIN_QUIET);
                }
            }
            () = &mut quiet, if input_closed => return Ok(ConsoleEnd::InputClosed),
            signo = &mut stop => return Ok(ConsoleEnd::Signal(signo)),
        }
    }
}

/// The part of a typed chunk to send, and whether the user asked to detach in it.
fn split_at_detach(chunk: &[u8], detach_enabled: bool) -> (&[u8], bool) {
    if !detach_enabled {
        return (chunk, false);
    }
    match chunk.iter().position(|&byte| byte == DETACH_BYTE) {
        Some(pos) => (&chunk[..pos], true),
        None => (chunk, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_bracket_detaches_after_sending_what_came_before() {
        assert_eq!(split_at_detach(b"ls\r", true), (&b"ls\r"[..], false));
        assert_eq!(split_at_detach(b"ab\x1dcd", true), (&b"ab"[..], true));
        assert_eq!(split_at_detach(b"\x1d", true), (&b""[..], true));
        assert_eq!(
            split_at_detach(b"ab\x1dcd", false),
            (&b"ab\x1dcd"[..], false)
        );
    }

    #[tokio::test]
    async fn pump_copies_both_ways_and_detaches() {
        let (console, mut vm_side) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::channel(4);
        let mut output = Vec::new();
        vm_side.write_all(b"login: ").await.unwrap();
        let typist = tokio::spawn(async move {
            let mut seen = vec![0u8; 5];
            tx.send(b"root\r".to_vec()).await.unwrap();
            vm_side.read_exact(&mut seen).await.unwrap();
            tx.send(b"x\x1dy".to_vec()).await.unwrap();
            let mut rest = vec![0u8; 1];
            vm_side.read_exact(&mut rest).await.unwrap();
            seen.extend(rest);
            seen
        });
        let end = pump(console, rx, &mut output, true, std::future::pending())
            .await
            .unwrap();
        assert_eq!(end, ConsoleEnd::Detached);
        assert_eq!(typist.await.unwrap(), b"root\rx");
        assert_eq!(output, b"login: ");
    }

    #[tokio::test(start_paused = true)]
    async fn pump_drains_output_after_input_ends() {
        let (console, mut vm_side) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::channel(4);
        tx.send(b"uptime\n".to_vec()).await.unwrap();
        drop(tx);
        let vm = tokio::spawn(async move {
            let mut typed = Vec::new();
            vm_side.read_to_end(&mut typed).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            vm_side.write_all(b" 10:00 up 1 min\n").await.unwrap();
            // Keep the console open: the session must end by going quiet.
            (typed, vm_side)
        });
        let mut output = Vec::new();
        let end = pump(console, rx, &mut output, false, std::future::pending())
            .await
            .unwrap();
        assert_eq!(end, ConsoleEnd::InputClosed);
        assert_eq!(vm.await.unwrap().0, b"uptime\n");
        assert_eq!(output, b" 10:00 up 1 min\n");
    }

    #[tokio::test]
    async fn pump_ends_when_the_daemon_closes() {
        let (console, vm_side) = tokio::io::duplex(64);
        let (_tx, rx) = mpsc::channel(1);
        drop(vm_side);
        let mut output = Vec::new();
        let end = pump(console, rx, &mut output, false, std::future::pending())
            .await
            .unwrap();
        assert_eq!(end, ConsoleEnd::RemoteClosed);
    }
}
