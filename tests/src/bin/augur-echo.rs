//! A tiny HTTP service for augur's tests and benchmarks, run as a service instance: listens on
//! 127.0.0.1:$PORT and answers every request with its instance id (`$AUGUR_INSTANCE`), `/healthz`
//! included. One request per connection.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let id = std::env::var("AUGUR_INSTANCE").unwrap_or_else(|_| "echo".to_owned());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let (mut s, _) = listener.accept().await?;
        let body = format!("{id}\n");
        tasks.spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            // Read the request head (until the blank line).
            while got < buf.len() {
                match s.read(&mut buf[got..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
                if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(answer.as_bytes()).await;
        });
    }
}
