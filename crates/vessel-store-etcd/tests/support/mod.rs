//! A real etcd server for tests: Debian's `etcd` binary (package etcd-server, installed by
//! scripts/install-deps.sh --test) on loopback ports, with its own data dir, killed on drop.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vessel_store_etcd::{EtcdOptions, EtcdStore};

pub struct EtcdServer {
    child: Option<Child>,
    pub client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl EtcdServer {
    /// A one-member etcd on fresh ports and a fresh data dir, answering when this returns.
    pub fn start() -> EtcdServer {
        let tmp = tempfile::tempdir().unwrap();
        let mut server = EtcdServer {
            child: None,
            client_url: format!("http://127.0.0.1:{}", free_port()),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
            data_dir: tmp.path().join("etcd"),
            _tmp: tmp,
        };
        server.spawn();
        server
    }

    /// Starts (or restarts, on the same data) the etcd process and waits until it serves.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_file_name("etcd.log"))
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.client_url])
            .args(["--advertise-client-urls", &self.client_url])
            .args(["--listen-peer-urls", &self.peer_url])
            .args(["--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", &format!("test={}", self.peer_url)])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args([
                "--experimental-enable-lease-checkpoint",
                "--experimental-enable-lease-checkpoint-persist",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian package etcd-server; scripts/install-deps.sh --test)");
        self.child = Some(child);
        self.await_serving();
    }

    fn await_serving(&self) {
        let address = self.client_url.trim_start_matches("http://").to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "etcd did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_file_name("etcd.log")).unwrap_or_default()
    }

    /// kill -9 of the etcd process; `spawn` brings it back on the same data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn options(&self, namespace: &str) -> EtcdOptions {
        let mut options = EtcdOptions::new(vec![self.client_url.clone()]);
        options.namespace = namespace.to_owned();
        options
    }

    pub async fn store(&self) -> EtcdStore {
        // A leader is elected a moment after the port opens: retry the first connection briefly.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match EtcdStore::connect(self.options("/vessel-test/")).await {
                Ok(store) => return store,
                Err(err) if Instant::now() < deadline => {
                    tracing_or_eprint(&err.to_string());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("cannot connect to the test etcd: {err}\n{}", self.log()),
            }
        }
    }
}

fn tracing_or_eprint(message: &str) {
    eprintln!("etcd not ready yet: {message}");
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
