//! Outbound clients to nodes: the upstream Ethereum node of a listener and the Bitcoin Core
//! node. They sit below `guard` and `server` (both use them) and depend on nothing but
//! `config`, so a transport never owns what the pipeline calls out to.

pub mod bitcoin_node;
pub mod upstream;
