//! `strom-conn-holder COUNT ADDR...`: opens COUNT idle TCP connections, round-robin over the
//! ADDRs, and holds them until its stdin closes, so that a test can hold more connections than
//! one process's open-file limit allows (`tests/e2e/connections.rs`).
//!
//! It prints `opened COUNT` once every connection is established (or `error ...` and exits 1),
//! then answers each `check` line on stdin with `open N`: how many the broker has not closed.
//! Connections close with a reset (SO_LINGER 0): no TIME_WAIT sockets hold loopback ports.

use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound for opening every connection.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let mut out = std::io::stdout().lock();
    match run(&mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            let _ = writeln!(out, "error {why}");
            let _ = out.flush();
            ExitCode::FAILURE
        }
    }
}

fn run(out: &mut impl Write) -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let count: usize =
        args.next().and_then(|c| c.parse().ok()).ok_or("usage: strom-conn-holder COUNT ADDR...")?;
    let addrs: Vec<SocketAddr> = args
        .map(|a| a.parse().map_err(|e| format!("address {a}: {e}")))
        .collect::<Result<_, _>>()?;
    if addrs.is_empty() {
        return Err("no address given".into());
    }
    raise_open_file_limit();
    let deadline = Instant::now() + OPEN_TIMEOUT;
    let mut held = Vec::with_capacity(count);
    for n in 0..count {
        if Instant::now() >= deadline {
            return Err(format!("opened only {n} of {count} connections in {OPEN_TIMEOUT:?}"));
        }
        let addr = addrs[n % addrs.len()];
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| format!("connection {n} to {addr}: {e}"))?;
        rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO))
            .map_err(|e| format!("SO_LINGER: {e}"))?;
        stream.set_nonblocking(true).map_err(|e| format!("non-blocking: {e}"))?;
        held.push(stream);
    }
    writeln!(out, "opened {}", held.len()).and_then(|()| out.flush()).map_err(|e| e.to_string())?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim() == "check" {
            let open = held.iter().filter(|s| !closed_by_peer(s)).count();
            writeln!(out, "open {open}").and_then(|()| out.flush()).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// True when the peer has closed or reset the (non-blocking) connection.
fn closed_by_peer(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

/// The soft open-file limit up to the hard one (as root, the hard one too if allowed).
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let _ = setrlimit(Resource::Nofile, Rlimit { current: now.maximum, maximum: now.maximum });
}
