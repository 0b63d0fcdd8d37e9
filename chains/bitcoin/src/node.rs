//! Upstream Bitcoin Core node: placeholder, see the daemon for the client.
