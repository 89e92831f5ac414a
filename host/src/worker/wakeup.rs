//! Runners tell the cluster worker that a run ended, so that it reads the
//! job's logs at once instead of at its next status poll.
//!
//! A wake-up is one UDP datagram naming the job, sent by `wasmq exec` after
//! each envelope it prints. It carries no result: the worker only reads the
//! job's logs from Ray, as it would anyway, so a forged or lost datagram
//! costs at most one early read or the poll interval. The worker listens on
//! the address it uses to reach the Ray dashboard (the address the cluster
//! can route back to), on a port of the system's choosing.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};

/// Starts a wake-up datagram; the job's submission id follows.
pub const WAKE_PREFIX: &str = "wasmq-ran/1 ";
/// Longest datagram read (a submission id is about 50 bytes).
const MAX_DATAGRAM: usize = 512;

/// Where the worker listens for wake-ups (`--ray-wake`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeAddress {
    /// The local address of the route to the Ray dashboard, any port.
    Auto,
    /// No wake-ups: status polls only.
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for WakeAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(WakeAddress::Auto),
            "off" => Ok(WakeAddress::Off),
            _ => s
                .parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
                .map(WakeAddress::At)
                .map_err(|_| format!("`{s}`: expected auto, off, IP or IP:PORT")),
        }
    }
}

/// Binds the worker's wake-up socket; `dashboard` is the Ray address
/// (`http://HOST:PORT`). `None` when off.
pub fn bind(setting: &WakeAddress, dashboard: &str) -> std::io::Result<Option<UdpSocket>> {
    let at = match setting {
        WakeAddress::Off => return Ok(None),
        WakeAddress::At(addr) => *addr,
        WakeAddress::Auto => SocketAddr::new(route_towards(dashboard)?, 0),
    };
    let socket = UdpSocket::bind(at)?;
    socket.set_nonblocking(true)?;
    Ok(Some(socket))
}

/// The local address this machine sends from to reach `url`'s host
/// (a connected UDP socket sends nothing; it only picks the route).
fn route_towards(url: &str) -> std::io::Result<IpAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let target = authority
        .to_socket_addrs()
        .or_else(|_| format!("{authority}:80").to_socket_addrs())?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{authority} has no address")))?;
    let probe = if target.is_ipv4() {
        UdpSocket::bind("0.0.0.0:0")?
    } else {
        UdpSocket::bind("[::]:0")?
    };
    probe.connect(target)?;
    Ok(probe.local_addr()?.ip())
}

/// Receives wake-ups until the socket fails, calling `woken` with each
/// job id.
pub async fn listen(socket: UdpSocket, woken: impl Fn(&str)) -> std::io::Result<()> {
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    let mut buf = [0u8; MAX_DATAGRAM];
    loop {
        let (n, _) = socket.recv_from(&mut buf).await?;
        if let Some(job) = std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|s| s.strip_prefix(WAKE_PREFIX))
        {
            woken(job.trim());
        }
    }
}

/// The runner's side: a wake-up for `job`, best effort (a lost one only
/// waits for the worker's next poll).
pub struct Waker {
    socket: UdpSocket,
    to: SocketAddr,
    message: Vec<u8>,
}

impl Waker {
    /// `to`: the worker's `WASMQ_EXEC_WAKE`; `None` if it does not parse
    /// or no socket can be had.
    pub fn new(to: &str, job: &str) -> Option<Waker> {
        let to: SocketAddr = to.parse().ok()?;
        let socket = if to.is_ipv4() {
            UdpSocket::bind("0.0.0.0:0")
        } else {
            UdpSocket::bind("[::]:0")
        }
        .ok()?;
        Some(Waker {
            socket,
            to,
            message: format!("{WAKE_PREFIX}{job}").into_bytes(),
        })
    }

    pub fn wake(&self) {
        let _ = self.socket.send_to(&self.message, self.to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        assert_eq!("auto".parse(), Ok(WakeAddress::Auto));
        assert_eq!("off".parse(), Ok(WakeAddress::Off));
        assert_eq!(
            "127.0.0.1".parse(),
            Ok(WakeAddress::At("127.0.0.1:0".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:9".parse(),
            Ok(WakeAddress::At("[::1]:9".parse().unwrap()))
        );
        assert!("nope".parse::<WakeAddress>().is_err());
    }

    #[tokio::test]
    async fn a_runner_wakes_the_worker_on_the_route_to_the_dashboard() {
        let socket = bind(&WakeAddress::Auto, "http://127.0.0.1:8265/")
            .unwrap()
            .unwrap();
        let at = socket.local_addr().unwrap();
        assert!(at.ip().is_loopback(), "{at}");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(listen(socket, move |job| {
            let _ = tx.send(job.to_string());
        }));
        // Anything else that arrives is ignored.
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        other.send_to(b"hello", at).unwrap();
        Waker::new(&at.to_string(), "wasmq-x-1").unwrap().wake();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
        assert_eq!(got.unwrap().as_deref(), Some("wasmq-x-1"));
        assert!(
            bind(&WakeAddress::Off, "http://127.0.0.1:1")
                .unwrap()
                .is_none()
        );
    }
}
