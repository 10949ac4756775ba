//! A `vouch serve` process on a loopback port, killed when dropped. Shared by the tests of
//! the binary (`#[path]` modules).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct ServerProcess {
    pub child: Child,
    /// `https://127.0.0.1:PORT`.
    pub base: String,
}

impl ServerProcess {
    /// Runs `command` (`vouch serve ...`, or a wrapper that runs it; stdout is taken here)
    /// and waits up to a minute for its `listening on` line. `None` if it never came (the
    /// process is killed).
    pub fn start(mut command: Command) -> Option<Self> {
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Some(Self {
                child,
                base: format!("https://{addr}"),
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
