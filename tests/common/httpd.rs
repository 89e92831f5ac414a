//! A tiny HTTP/1.1 and HTTPS server on loopback for the outbound-HTTP tests:
//! fixed routes, one response per connection, and a count of the
//! connections it accepted (a refused request must open none).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What a route answers.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status: 200,
            headers: vec![],
            body: body.into(),
        }
    }

    pub fn redirect(location: &str) -> Reply {
        Reply {
            status: 302,
            headers: vec![("Location".into(), location.into())],
            body: vec![],
        }
    }
}

type Routes = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

pub struct Server {
    pub port: u16,
    accepted: Arc<AtomicUsize>,
    /// The head (request line and headers) of every request answered.
    heads: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Plain HTTP on 127.0.0.1.
    pub fn http(routes: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Server {
        Server::start(None, Arc::new(routes))
    }

    /// HTTPS on 127.0.0.1 with a certificate for `127.0.0.1` and `localhost`
    /// issued by a fresh CA, whose PEM is returned.
    pub fn https(routes: impl Fn(&str) -> Reply + Send + Sync + 'static) -> (Server, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        (
            Server::start(Some(Arc::new(config)), Arc::new(routes)),
            ca_cert.pem(),
        )
    }

    fn start(tls: Option<Arc<rustls::ServerConfig>>, routes: Routes) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (accepted.clone(), heads.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let (tls, routes, seen) = (tls.clone(), routes.clone(), seen.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, tls, &*routes, &seen);
                });
            }
        });
        Server {
            port,
            accepted,
            heads,
        }
    }

    /// The heads of the requests answered so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }
}

fn serve(
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    routes: &(dyn Fn(&str) -> Reply + Send + Sync),
    heads: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    match tls {
        None => answer(tcp, routes, heads),
        Some(config) => {
            let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
            answer(rustls::StreamOwned::new(conn, tcp), routes, heads)
        }
    }
}

fn answer(
    mut s: impl Read + Write,
    routes: &(dyn Fn(&str) -> Reply + Send + Sync),
    heads: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    heads.lock().unwrap().push(head.to_string());
    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
    let reply = routes(&path);
    let mut out = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    s.write_all(out.as_bytes())?;
    s.write_all(&reply.body)?;
    s.flush()
}
