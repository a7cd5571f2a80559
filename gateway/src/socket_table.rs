//! Counting established client connections on plain-HTTP listener ports from the kernel's
//! socket table (`/proc/self/net/tcp{,6}`), at scrape time.
//!
//! pingora offers no per-connection hook for cleartext listeners (TLS connections are counted
//! from the handshake callback instead), and counting per request would put work on the request
//! path. The kernel already knows every accepted socket: a scrape reads its table, so the
//! request path pays nothing.

use std::collections::HashSet;

/// `st` of an established TCP socket in `/proc/net/tcp`.
const ESTABLISHED: &str = "01";

/// Established TCP connections whose local port is one of `ports`, in this process's network
/// namespace; `None` when the table cannot be read (not Linux, no procfs).
pub fn established_on(ports: &HashSet<u16>) -> Option<i64> {
    if ports.is_empty() {
        return Some(0);
    }
    let mut count = 0;
    let mut readable = false;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        // tcp6 is absent when IPv6 is disabled: that is no error as long as one table reads.
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        count += count_in_table(&text, ports);
    }
    readable.then_some(count)
}

/// Counts the rows of one table (header line first) that are established on one of `ports`.
fn count_in_table(text: &str, ports: &HashSet<u16>) -> i64 {
    let mut count = 0;
    for row in text.lines().skip(1) {
        let mut fields = row.split_whitespace();
        // sl, local_address, rem_address, st
        let (Some(_), Some(local), Some(_), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if state != ESTABLISHED {
            continue;
        }
        let port = local
            .rsplit_once(':')
            .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
        if port.is_some_and(|port| ports.contains(&port)) {
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:D2F2 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0
   3: 0100007F:D2F4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   4: 0100007F:01BB 0100007F:D2F6 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
garbage
";

    #[test]
    fn counts_established_sockets_on_the_given_local_ports_only() {
        // Row 0 is the listener, row 2 is in TIME_WAIT, row 3 is a client whose *remote* port
        // is 8080, row 4 is on port 443.
        assert_eq!(count_in_table(TABLE, &HashSet::from([8080])), 1);
        assert_eq!(count_in_table(TABLE, &HashSet::from([8080, 443])), 2);
        assert_eq!(count_in_table(TABLE, &HashSet::from([9999])), 0);
    }

    #[test]
    fn this_process_sees_its_own_connection() -> std::io::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port))?;
        let (_accepted, _) = listener.accept()?;
        // The client side has an ephemeral local port; the accepted side has `port`.
        assert_eq!(established_on(&HashSet::from([port])), Some(1));
        Ok(())
    }
}
